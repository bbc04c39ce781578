// Fills each row's `expected` in cases.json with what a running HarperDB answers.
//   node tests/sql_conformance/regen.mjs [URL]     (URL default http://127.0.0.1:19725)
// env: HDB_ADMIN_USERNAME, HDB_ADMIN_PASSWORD (the super user). The server should be fresh (the
// setup creates dev.dog, dev.breed, dev.locations, movies.movie, movies.credits) and run in UTC.
// Rows keep their `page`, `name`, `sql`, `compare`, and for a deliberate difference its
// `difference` (the reason) and `tidepool` (tidepool's own answer, which the test then checks);
// only `expected` ({status, body}: HarperDB's answer) is rewritten.
import { readFileSync, writeFileSync } from 'node:fs';

const file = new URL('./cases.json', import.meta.url);
const url = process.argv[2] ?? 'http://127.0.0.1:19725';
const auth =
	'Basic ' + Buffer.from(`${process.env.HDB_ADMIN_USERNAME}:${process.env.HDB_ADMIN_PASSWORD}`).toString('base64');

async function post(body) {
	const r = await fetch(url, {
		method: 'POST',
		headers: { 'Content-Type': 'application/json', Authorization: auth },
		body: JSON.stringify(body),
	});
	const text = await r.text();
	let parsed;
	try {
		parsed = JSON.parse(text);
	} catch {
		parsed = text;
	}
	return { status: r.status, body: parsed };
}

const cases = JSON.parse(readFileSync(file, 'utf8'));
for (const op of cases.setup) {
	const r = await post(op);
	if (r.status !== 200) throw new Error(`setup ${JSON.stringify(op).slice(0, 120)} → ${r.status} ${JSON.stringify(r.body)}`);
	// HarperDB creates tables asynchronously across threads: give each a moment.
	if (op.operation.startsWith('create_')) await new Promise((ok) => setTimeout(ok, 300));
}
for (const row of cases.rows) {
	row.expected = await post({ operation: 'sql', sql: row.sql });
	console.log(row.expected.status, row.page, '|', row.name);
}
writeFileSync(file, JSON.stringify(cases, null, 1) + '\n');
