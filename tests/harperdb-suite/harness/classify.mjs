// Assigns every failing non-sql test of a run to one cause (first rule that matches), prints
// counts per cause and writes OUT/classified.jsonl. Rules look at the test's requests, tidepool's
// answers and the assertion that failed.
import fs from 'node:fs';
const out = process.argv[2];
const F = fs.readFileSync(`${out}/failures.jsonl`, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));

const any = (f, p) => f.requests.some(p);
const op = (r) => {
	try {
		return JSON.parse(r.body).operation;
	} catch {
		return undefined;
	}
};
const hasOp = (f, o, extra = () => true) => any(f, (r) => op(r) === o && extra(r));
const msg = (f) => {
	const parts = [];
	for (let e = f.error; e; e = e.cause) parts.push(String(e.message ?? ''), JSON.stringify(e.expected ?? ''));
	return parts.join(' | ');
};
const resp = (r, s) => (r.resp ?? '').includes(s);
const body = (r, s) => (r.body ?? '').includes(s);

export const RULES = [
	['lockout', (f) => any(f, (r) => r.status === 429)],
	['data-file-absent', (f) => /Upload (movies|credits)\.csv/.test(f.test)],
	['sql-cascade', (f) => /Verify records are deleted/.test(f.test) && f.file.startsWith('8.')],
	['role-attr-delete', (f) => any(f, (r) => /add_role|alter_role/.test(op(r) ?? '') && resp(r, "unknown key 'delete'"))],
	['role-attr-delete-cascade', (f) =>
		any(f, (r) => (r.status === 401 && resp(r, 'Login failed')) ||
			(/add_user/.test(op(r) ?? '') && r.status === 404 && /developer_test_5|test_dev_role|test_schema_user/.test(r.body)) ||
			(/drop_user|drop_role/.test(op(r) ?? '') && r.status === 404 && !/nonexistent|non-existent/i.test(f.test)))],
	['job-queue-503', (f) => any(f, (r) => r.status === 503 && resp(r, 'jobs are running'))],
	['job-queue-503-cascade', (f) => f.file.startsWith('4.') && any(f, (r) => body(r, '"table":"employees"') && (r.resp === '[]' || resp(r, '"updated 0 of')))],
	['lockout-cascade', (f) => /valid jwt|correct token/.test(f.test) && any(f, (r) => resp(r, 'invalid token') || resp(r, 'Must login'))],
	['csv-latin1', (f) => /CSV input is not valid UTF-8/.test(msg(f))],
	['job-status-created', (f) => /Status was: CREATED/.test(msg(f))],
	['job-status-created-cascade', (f) => f.test === 'csv bulk load update confirm'],
	['csv-extra-fields', (f) => /fields where the header has/.test(msg(f))],
	['orders-empty-cascade', (f) => hasOp(f, 'search_by_value', (r) => body(r, '"table":"orders"') && r.resp === '[]')],
	['csv-missing-file-accepted', (f) => hasOp(f, 'csv_file_load', (r) => body(r, 'Suppliers_wrong.csv') && r.status === 200)],
	['csv-non-su-refused-up-front', (f) => any(f, (r) => /csv_(file|data)_load/.test(op(r) ?? '') && r.status === 403)],
	['attr-name-backtick-slash', (f) => /Attribute names cannot include backticks or forward slashes/.test(msg(f))],
	['numeric-db-table-name', (f) => /as number - expect error|number number (table|schema)/.test(f.test)],
	['empty-or-null-primary-key', (f) => /a valid hash attribute must be provided|is not a valid hash attribute value/.test(msg(f)) && any(f, (r) => r.status === 200)],
	['role-without-attribute-permissions', (f) => /missing attr perms for table|perms for non-existent (schema|table)/.test(f.test)],
	['role-error-shape', (f) => /add_role|alter_role/.test(op(f.requests.at(-1) ?? {}) ?? '') && (/Errors in the role permissions JSON provided/.test(msg(f)) || /reading 'length'/.test(msg(f)))],
	['timestamp-attr-non-integer', (f) => any(f, (r) => resp(r, 'in property __createdtime__ must be an integer') || resp(r, 'in property __updatedtime__ must be an integer'))],
	['op-missing-delete_files_before', (f) => hasOp(f, 'delete_files_before')],
	['op-missing-delete_files_before-cascade', (f) =>
		(f.file.startsWith('8.') && /Search by hash confirm/.test(f.test)) || (f.file.startsWith('7.') && hasOp(f, 'get_job', (r) => body(r, '"id":""')))],
	['op-missing-delete_audit_logs_before', (f) => hasOp(f, 'delete_audit_logs_before', (r) => r.status === 501)],
	['op-missing-export_local', (f) => hasOp(f, 'export_local', (r) => r.status === 501)],
	['op-missing-restart', (f) => hasOp(f, 'restart', (r) => r.status === 501)],
	['set-configuration-keys', (f) => any(f, (r) => resp(r, 'Unknown configuration key')) || /reading 'maxSize'/.test(msg(f))],
	['system-information-shape', (f) => hasOp(f, 'system_information', (r) => r.status === 200)],
	['get-configuration-shape', (f) => /Get Configuration$/.test(f.test) && hasOp(f, 'get_configuration', (r) => r.status === 200)],
	['delete-txn_time', (f) => hasOp(f, 'delete', (r) => r.status === 200 && resp(r, 'txn_time')) && /deepEqual|deepStrictEqual|Lines skipped/.test(msg(f))],
	['system-db-su-writes', (f) => f.requests.some((r) => r.user !== 'important-user' && r.user !== 'test_user' && /insert|update|delete/.test(op(r) ?? '') && resp(r, "Records of the 'system' database cannot be written")) ||
		(/Confirm record in table/.test(f.test) && hasOp(f, 'search_by_id', (r) => body(r, 'hdb_nodes')))],
	['system-db-message', (f) => /used internally by HarperDB and cannot be updated or removed|permission to view database metadata for 'system'/.test(msg(f)) ||
		any(f, (r) => body(r, '"schema":"system"') && r.user === 'test_user' && r.status === 403) || (/SYSTEM schema/.test(f.test))],
	['missing-db-table-search-404', (f) => /expected 404 "Not Found", got 400/.test(msg(f))],
	['restricted-op-message-names-handler', (f) => /Operation '[a-zA-Z]+' is restricted to 'super_user' roles/.test(String(f.error?.cause?.expected ?? f.error?.expected ?? ''))],
	['describe-restricted-trim-and-hide', (f) => any(f, (r) => /describe_(all|schema|table)/.test(op(r) ?? '') && r.user !== 'admin')],
	['hidden-items-as-does-not-exist', (f) => any(f, (r) => r.user !== 'admin' && r.status === 403 && resp(r, 'unauthorized_access')) ],
	['auth-token-empty-credentials', (f) => hasOp(f, 'create_authentication_tokens')],
	['error-text', (f) => /\+ actual - expected/.test(msg(f)) && any(f, (r) => r.status >= 400)],
];

const byCause = new Map();
const rows = [];
for (const f of F) {
	if (f.sql) continue;
	const rule = RULES.find(([, m]) => m(f));
	const cause = rule ? rule[0] : 'UNCLASSIFIED';
	rows.push({ ...f, cause });
	byCause.set(cause, (byCause.get(cause) ?? 0) + 1);
}
fs.writeFileSync(`${out}/classified.jsonl`, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
for (const [c, n] of [...byCause].sort((a, b) => b[1] - a[1])) console.log(`${String(n).padStart(4)} ${c}`);
console.log(`${String(rows.length).padStart(4)} total non-sql failures`);
for (const r of rows.filter((x) => x.cause === 'UNCLASSIFIED')) console.log('  UNCLASSIFIED', r.id, r.file, r.test);
