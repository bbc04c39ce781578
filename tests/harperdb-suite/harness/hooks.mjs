// Resolve hook: every `node:test` import except the wrapper's own goes to test-wrap.mjs.
const wrapper = new URL('./test-wrap.mjs', import.meta.url).href;
export async function resolve(specifier, context, next) {
	if (specifier === 'node:test' && context.parentURL !== wrapper) {
		return { url: wrapper, shortCircuit: true };
	}
	return next(specifier, context);
}
