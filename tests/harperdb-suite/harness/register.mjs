// Preloaded with `node --import`: redirects `node:test` to test-wrap.mjs (records which test is
// running) and logs every HTTP exchange with that test's name (HDB_SUITE_HTTPLOG, JSON lines).
// Instrumentation only: the suite's requests and assertions are unchanged.
import { register } from 'node:module';
import http from 'node:http';
import fs from 'node:fs';
import zlib from 'node:zlib';

register('./hooks.mjs', import.meta.url);

const logPath = process.env.HDB_SUITE_HTTPLOG;
if (logPath) {
	const out = fs.openSync(logPath, 'w');
	let seq = 0;
	const cut = (s) => (s.length > 6000 ? s.slice(0, 6000) + `…(${s.length} chars)` : s);
	const origRequest = http.request;
	// HDB_SUITE_STRIP_ATTR_DELETE=1 (diagnostic only): remove `delete` keys inside
	// attribute_permissions of add_role/alter_role bodies, to see what the refusal of that key hides.
	const stripDelete = process.env.HDB_SUITE_STRIP_ATTR_DELETE === '1';
	const stripAttrDelete = (text) => {
		let o;
		try {
			o = JSON.parse(text);
		} catch {
			return text;
		}
		if (!o || (o.operation !== 'add_role' && o.operation !== 'alter_role') || typeof o.permission !== 'object') return text;
		let changed = false;
		for (const db of Object.values(o.permission ?? {})) {
			for (const t of Object.values(db?.tables ?? {})) {
				for (const a of Array.isArray(t?.attribute_permissions) ? t.attribute_permissions : []) {
					if (a && typeof a === 'object' && 'delete' in a) {
						delete a.delete;
						changed = true;
					}
				}
			}
		}
		return changed ? JSON.stringify(o) : text;
	};
	// HDB_SUITE_SPREAD_ADDR=1: every request from its own random 127.x.y.z source address, so a
	// server's per-address failed-login lock-out never trips (diagnostic runs only).
	const spread = process.env.HDB_SUITE_SPREAD_ADDR === '1';
	const rnd = () => 1 + Math.floor(Math.random() * 254);
	http.request = function (...args) {
		if (spread) {
			const o = args.find((a) => a && typeof a === 'object' && !(a instanceof URL));
			if (o && !o.localAddress) o.localAddress = `127.${rnd()}.${rnd()}.${rnd()}`;
		}
		const req = origRequest.apply(this, args);
		const rec = { seq: ++seq, test: globalThis.__hdbCurrentTest ?? null, method: req.method, path: req.path };
		const auth = req.getHeader('authorization');
		if (typeof auth === 'string' && auth.startsWith('Basic ')) {
			rec.user = Buffer.from(auth.slice(6), 'base64').toString().split(':')[0];
		} else if (typeof auth === 'string') {
			rec.user = auth.split(' ')[0];
		}
		const chunks = [];
		const ow = req.write;
		const oe = req.end;
		const keep = (c) => {
			if (c && typeof c !== 'function') chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(String(c)));
		};
		req.write = function (c, ...r) {
			keep(c);
			return ow.call(this, c, ...r);
		};
		req.end = function (c, ...r) {
			if (stripDelete && c && typeof c !== 'function' && !req.headersSent) {
				const t = String(c);
				const u = stripAttrDelete(t);
				if (u !== t) {
					c = u;
					req.setHeader('Content-Length', Buffer.byteLength(u));
					rec.rewritten = true;
				}
			}
			keep(c);
			rec.body = cut(Buffer.concat(chunks).toString());
			return oe.call(this, c, ...r);
		};
		let written = false;
		const write = () => {
			if (written) return;
			written = true;
			fs.writeSync(out, JSON.stringify(rec) + '\n');
		};
		req.on('response', (res) => {
			const rc = [];
			res.on('data', (d) => rc.push(Buffer.isBuffer(d) ? d : Buffer.from(String(d))));
			res.on('end', () => {
				try {
				rec.status = res.statusCode;
				let buf = Buffer.concat(rc);
				try {
					const enc = res.headers['content-encoding'];
					if (enc === 'gzip') buf = zlib.gunzipSync(buf);
					else if (enc === 'deflate') buf = zlib.inflateSync(buf);
					else if (enc === 'br') buf = zlib.brotliDecompressSync(buf);
				} catch (e) {
					rec.decodeError = String(e);
				}
				rec.resp = cut(buf.toString());
				write();
				} catch (e) {
					rec.logError = String(e);
					write();
				}
			});
		});
		req.on('error', (e) => {
			rec.error = String(e);
			write();
		});
		return req;
	};
}
