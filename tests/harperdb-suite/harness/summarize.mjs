// Summarizes a run: per-file passed/failed/skipped (tests sending the `sql` operation counted
// apart), and OUT/failures.jsonl: each failing test, its source line, error, HTTP exchanges.
import fs from 'node:fs';
const out = process.argv[2];
const lines = (p) => (fs.existsSync(p) ? fs.readFileSync(p, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)) : []);
const events = lines(`${out}/results.jsonl`);
const http = lines(`${out}/http.jsonl`);
const registered = lines(`${out}/tests.jsonl`);

// Rebuild the tree: events arrive children first; a node at nesting k adopts pending k+1.
const pending = {};
for (const ev of events) {
	ev.children = pending[ev.nesting + 1] ?? [];
	pending[ev.nesting + 1] = [];
	for (const c of ev.children) c.parent = ev;
	(pending[ev.nesting] ??= []).push(ev);
}
const path = (ev) => {
	const p = [];
	for (let e = ev; e; e = e.parent) p.unshift(e.name);
	return p;
};
const byTest = new Map();
for (const h of http) {
	if (!byTest.has(h.test)) byTest.set(h.test, []);
	byTest.get(h.test).push(h);
}
const files = new Map();
const failures = [];
const all = [];
let k = 0;
let mismatches = 0;
for (const ev of events) {
	// A skipped describe (never run, so its tests are not registered) counts as one skipped test,
	// as node's own summary counts it.
	const skippedSuite = ev.isSuite && ev.skip && !ev.children.length;
	if (!skippedSuite && (ev.isSuite || ev.children.length)) continue;
	const p = path(ev);
	const reg = skippedSuite ? { id: null, full: p.join(' > ') } : (registered[k++] ?? {});
	if (reg.full !== p.join(' > ')) mismatches++;
	const file = p[1] ?? p[0];
	const reqs = byTest.get(reg.id) ?? [];
	const sql = reqs.some((r) => /"operation"\s*:\s*"sql"/.test(r.body ?? ''));
	const f = files.get(file) ?? { passed: 0, failed: 0, skipped: 0, sqlFailed: 0 };
	const status = ev.skip || ev.todo ? 'skipped' : ev.type === 'test:pass' ? 'passed' : 'failed';
	f[status]++;
	all.push({ id: reg.id, file, src: `${reg.file}:${reg.line}`, test: p.slice(2).join(' > '), status, sql });
	if (status === 'failed') {
		if (sql) f.sqlFailed++;
		failures.push({ id: reg.id, file, src: `${reg.file}:${reg.line}`, test: p.slice(2).join(' > '), sql, error: ev.error, requests: reqs });
	}
	files.set(file, f);
}
fs.writeFileSync(`${out}/failures.jsonl`, failures.map((f) => JSON.stringify(f)).join('\n') + '\n');
fs.writeFileSync(`${out}/all.jsonl`, all.map((f) => JSON.stringify(f)).join('\n') + '\n');
if (mismatches) console.log(`WARNING: ${mismatches} results did not line up with the registration log`);
const t = { passed: 0, failed: 0, sqlFailed: 0, skipped: 0 };
console.log('| test file | passed | failed | of which `sql` | skipped |\n| --- | ---: | ---: | ---: | ---: |');
for (const [file, f] of files) {
	console.log(`| ${file} | ${f.passed} | ${f.failed} | ${f.sqlFailed} | ${f.skipped} |`);
	for (const x in t) t[x] += f[x];
}
console.log(`| **total** (${t.passed + t.failed + t.skipped}) | ${t.passed} | ${t.failed} | ${t.sqlFailed} | ${t.skipped} |`);
