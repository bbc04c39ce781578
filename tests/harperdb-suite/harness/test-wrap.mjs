// node:test with describe/it wrapped so globalThis.__hdbCurrentTest names the running test
// ("file suite > test"). Behaviour of the tests is unchanged.
import * as nt from 'node:test';
import fs from 'node:fs';
export * from 'node:test';

// Registration log (HDB_SUITE_TESTLOG): one line per registered test, in order, with the file and
// line of its `it(` call; the reporter's events come in the same order (tests run sequentially).
const testLog = process.env.HDB_SUITE_TESTLOG ? fs.openSync(process.env.HDB_SUITE_TESTLOG, 'w') : null;
let nextId = 0;
function callSite() {
	const lines = String(new Error().stack).split('\n').slice(1);
	const l = lines.find((x) => !x.includes('test-wrap.mjs')) ?? '';
	const m = l.match(/(file:\/\/[^\s)]+):(\d+):\d+/);
	return m ? { file: m[1].replace(/^.*\/apiTests\//, ''), line: Number(m[2]) } : {};
}

const stack = [];
const fnIndex = (args) => args.findIndex((a) => typeof a === 'function');

function wrapSuite(orig) {
	const w = function (name, ...rest) {
		const i = fnIndex(rest);
		if (i >= 0) {
			const fn = rest[i];
			rest[i] = function (...a) {
				stack.push(name);
				let r;
				try {
					r = fn.apply(this, a);
				} catch (e) {
					stack.pop();
					throw e;
				}
				if (r && typeof r.then === 'function') return r.finally(() => stack.pop());
				stack.pop();
				return r;
			};
		}
		return orig.call(this, name, ...rest);
	};
	return w;
}

function wrapTest(orig) {
	return function (name, ...rest) {
		const i = fnIndex(rest);
		const full = [...stack, name].join(' > ');
		const id = ++nextId;
		if (testLog) fs.writeSync(testLog, JSON.stringify({ id, full, ...callSite() }) + '\n');
		if (i >= 0) {
			const fn = rest[i];
			const wrapped = function (...a) {
				globalThis.__hdbCurrentTest = id;
				return fn.apply(this, a);
			};
			Object.defineProperty(wrapped, 'length', { value: fn.length });
			rest[i] = wrapped;
		}
		return orig.call(this, name, ...rest);
	};
}

function withModifiers(w, orig, wrapFn) {
	for (const k of ['skip', 'todo', 'only']) if (typeof orig[k] === 'function') w[k] = wrapFn(orig[k].bind(orig));
	return w;
}

export const describe = withModifiers(wrapSuite(nt.describe), nt.describe, wrapSuite);
export const suite = describe;
export const it = withModifiers(wrapTest(nt.it), nt.it, wrapTest);
export const test = withModifiers(wrapTest(nt.test), nt.test, wrapTest);
export default test;
