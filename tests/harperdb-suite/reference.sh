#!/usr/bin/env bash
# Runs the same core group against HarperDB itself (npm harperdb@4.7.29, installed the way
# bench/compare does), to see what HarperDB answers to each request.
#   usage: reference.sh [OUT_DIR]
# env: HDB_SUITE_DIR (/tmp/hdb-suite, prepared by setup.sh), HDB_REF_DIR (/tmp/hdb-ref: the npm
#      install, a fresh HOME and root), HARPERDB_VERSION (4.7.29), REF_OPS_PORT (29925),
#      REF_REST_PORT (29926). HarperDB restarts itself during 8a_restartHdbToUpdateConfig, so it
#      is stopped at the end by the PID in <root>/hdb.pid, not the PID it was started with.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
export HDB_SUITE_DIR=${HDB_SUITE_DIR:-/tmp/hdb-suite}
REF=${HDB_REF_DIR:-/tmp/hdb-ref}
VERSION=${HARPERDB_VERSION:-4.7.29}
OPS=${REF_OPS_PORT:-29925}; REST=${REF_REST_PORT:-29926}
OUT=${1:-$HDB_SUITE_DIR/out-harperdb-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$OUT" "$REF"; OUT=$(cd "$OUT" && pwd)
export HDB_ADMIN_USERNAME=${HDB_ADMIN_USERNAME:-admin}
export HDB_ADMIN_PASSWORD=${HDB_ADMIN_PASSWORD:-Abc1234!}
ENTRY="$REF/node_modules/harperdb/bin/harperdb.js"
[ -f "$ENTRY" ] || npm install --no-audit --no-fund --prefix "$REF" "harperdb@$VERSION" || exit 1
rm -rf "$REF/home" "$REF/root" "$REF/app"; mkdir -p "$REF/home" "$REF/app"
printf 'rest: true\n' >"$REF/app/config.yaml"
env HOME="$REF/home" TC_AGREEMENT=yes ROOTPATH="$REF/root" \
  HTTP_PORT=$REST OPERATIONSAPI_NETWORK_PORT=$OPS MQTT_NETWORK_PORT=29883 \
  MQTT_NETWORK_SECUREPORT=29884 REPLICATION_SECUREPORT=29933 THREADS_COUNT=1 \
  node "$ENTRY" run "$REF/app" >"$OUT/server.out" 2>&1 &
echo "harperdb pid $!"
for _ in $(seq 1 150); do
  curl -fsS -u "$HDB_ADMIN_USERNAME:$HDB_ADMIN_PASSWORD" -H 'Content-Type: application/json' \
    -d '{"operation":"describe_all"}' "http://127.0.0.1:$OPS/" >/dev/null 2>&1 && break
  sleep 0.4
done
export HARPER_HOST=http://127.0.0.1 HARPER_PORT=$OPS HARPER_PORT_REST=$REST
export HDB_SUITE_HTTPLOG="$OUT/http.jsonl" HDB_SUITE_TESTLOG="$OUT/tests.jsonl"
(cd "$HDB_SUITE_DIR/integrationTests/apiTests" && timeout 1500 node --import "$HERE/harness/register.mjs" \
  --test-reporter="$HERE/harness/reporter.mjs" --test-reporter-destination="$OUT/results.jsonl" \
  --test-reporter=spec --test-reporter-destination="$OUT/spec.txt" \
  "$HERE/harness/coreSuite.mjs")
PID=$(cat "$REF/root/hdb.pid" 2>/dev/null)
if [ -n "$PID" ]; then
  kill -TERM "$PID"
  for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.2; done
fi
node "$HERE/harness/summarize.mjs" "$OUT" | tee "$OUT/summary.txt"
