// node:test reporter: one JSON line per finished test or suite (pass/fail/skip, error details).
function ser(e, depth = 0) {
	if (!e || depth > 3) return undefined;
	const o = { message: String(e.message ?? e).slice(0, 4000) };
	for (const k of ['code', 'failureType', 'operator', 'status']) if (e[k] !== undefined) o[k] = e[k];
	for (const k of ['expected', 'actual']) {
		if (e[k] !== undefined) {
			try {
				o[k] = JSON.parse(JSON.stringify(e[k]));
			} catch {
				o[k] = String(e[k]);
			}
		}
	}
	if (e.cause) o.cause = ser(e.cause, depth + 1);
	return o;
}
export default async function* reporter(source) {
	for await (const ev of source) {
		if (ev.type === 'test:pass' || ev.type === 'test:fail') {
			const d = ev.data;
			yield JSON.stringify({
				type: ev.type,
				name: d.name,
				nesting: d.nesting,
				skip: d.skip ?? false,
				todo: d.todo ?? false,
				file: d.file,
				line: d.line,
				duration_ms: d.details?.duration_ms,
				isSuite: d.details?.type === 'suite',
				error: ser(d.details?.error),
			}) + '\n';
		}
	}
}
