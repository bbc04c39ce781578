#!/usr/bin/env bash
# Runs the core group of HarperDB's API test suite (prepared by setup.sh) against a tidepool
# binary on a fresh root, then stops it by its PID.
#   usage: run.sh /path/to/tidepool [OUT_DIR]
# env: HDB_SUITE_DIR (/tmp/hdb-suite), OPS_PORT (19925), REST_PORT (19926), MQTT_PORT (19883),
#      MQTT_SECURE_PORT (19884), HDB_ADMIN_USERNAME (admin), HDB_ADMIN_PASSWORD (Abc1234!);
#      diagnostic only: HDB_SUITE_SPREAD_ADDR=1 sends each request from its own 127.x.y.z (the
#      per-address failed-login lock-out never trips); HDB_SUITE_STRIP_ATTR_DELETE=1 drops `delete`
#      keys from attribute_permissions in add_role/alter_role bodies.
# Writes OUT_DIR: results.jsonl (node:test events), tests.jsonl (each test's file:line),
# http.jsonl (every request and answer, by test), spec.txt, server.out, root/ (tidepool's root),
# failures.jsonl, classified.jsonl, summary.txt (per-file table, then failures per cause).
set -u
BIN=${1:?usage: run.sh /path/to/tidepool [OUT_DIR]}
BIN=$(readlink -f "$BIN")
HERE=$(cd "$(dirname "$0")" && pwd)
export HDB_SUITE_DIR=${HDB_SUITE_DIR:-/tmp/hdb-suite}
[ -d "$HDB_SUITE_DIR/integrationTests/node_modules/supertest" ] || { echo "run setup.sh first"; exit 1; }
OUT=${2:-$HDB_SUITE_DIR/out-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
OPS_PORT=${OPS_PORT:-19925}; REST_PORT=${REST_PORT:-19926}
MQTT_PORT=${MQTT_PORT:-19883}; MQTT_SECURE_PORT=${MQTT_SECURE_PORT:-19884}
export HDB_ADMIN_USERNAME=${HDB_ADMIN_USERNAME:-admin}
export HDB_ADMIN_PASSWORD=${HDB_ADMIN_PASSWORD:-Abc1234!}
ROOT="$OUT/root"; rm -rf "$ROOT"; mkdir -p "$ROOT"

"$BIN" run "$HDB_SUITE_DIR/app" --root "$ROOT" \
  --OPERATIONSAPI_NETWORK_PORT 127.0.0.1:$OPS_PORT --HTTP_PORT 127.0.0.1:$REST_PORT \
  --MQTT_NETWORK_PORT 127.0.0.1:$MQTT_PORT --MQTT_NETWORK_SECUREPORT 127.0.0.1:$MQTT_SECURE_PORT \
  --LOGGING_LEVEL info >"$OUT/server.out" 2>&1 &
PID=$!
echo "tidepool pid $PID, root $ROOT"
up=0
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$OPS_PORT/health" >/dev/null 2>&1 && { up=1; break; }
  kill -0 $PID 2>/dev/null || break
  sleep 0.2
done
if [ $up = 0 ]; then echo "tidepool did not come up:"; cat "$OUT/server.out"; kill -TERM $PID 2>/dev/null; exit 1; fi

export HARPER_HOST=http://127.0.0.1 HARPER_PORT=$OPS_PORT HARPER_PORT_REST=$REST_PORT
export HDB_SUITE_HTTPLOG="$OUT/http.jsonl" HDB_SUITE_TESTLOG="$OUT/tests.jsonl"
START=$(date +%s)
(cd "$HDB_SUITE_DIR/integrationTests/apiTests" && timeout 1500 node --import "$HERE/harness/register.mjs" \
  --test-reporter="$HERE/harness/reporter.mjs" --test-reporter-destination="$OUT/results.jsonl" \
  --test-reporter=spec --test-reporter-destination="$OUT/spec.txt" \
  "$HERE/harness/coreSuite.mjs")
echo "suite exit $? after $(( $(date +%s) - START )) s"

kill -TERM $PID 2>/dev/null
for _ in $(seq 1 75); do kill -0 $PID 2>/dev/null || break; sleep 0.2; done
kill -0 $PID 2>/dev/null && { echo "tidepool still running; SIGKILL $PID"; kill -KILL $PID; }
wait $PID 2>/dev/null
{
  echo "failed logins logged by tidepool: $(grep -c 'failed login' "$ROOT"/log/hdb.log 2>/dev/null)"
  echo "answers 429 (failed-login lock-out): $(grep -c '"status":429' "$OUT/http.jsonl" 2>/dev/null)"
  node "$HERE/harness/summarize.mjs" "$OUT"
  echo
  echo "non-sql failures per cause (harness/classify.mjs):"
  node "$HERE/harness/classify.mjs" "$OUT"
} | tee "$OUT/summary.txt"
