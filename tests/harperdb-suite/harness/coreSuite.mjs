// The portable "core" group of HarperDB's API suite: its testSuite.mjs without 15, 17a, 18, 19,
// 20, 22, 23, 24, 26 (components, GraphQL, REST, OpenAPI, blobs, OCSP/CRL), in the suite's order.
// The suite is read from $HDB_SUITE_DIR/integrationTests/apiTests (see setup.sh).
import { describe } from 'node:test';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const dir = path.join(process.env.HDB_SUITE_DIR ?? '/tmp/hdb-suite', 'integrationTests/apiTests/tests');
describe('Main Test Suite', async () => {
	for (const f of [
		'0_envCleanup', '1_environmentSetup', '2_dataLoad', '3_sqlTests', '4_noSqlTests',
		'5_noSqlRoleTesting', '6_sqlRoleTesting', '7_jobsAndJobRoleTesting', '8_deleteTests',
		'8a_restartHdbToUpdateConfig', '9_transactions', '10_otherRoleTests', '11_alterUserTests',
		'12_configuration', '13_systemInformation', '14_tokenAuth', '16_terminologyUpdates',
		'17_environmentCleanUp', '21_authenticationTests',
	]) {
		await import(pathToFileURL(path.join(dir, `${f}.mjs`)).href);
	}
});
