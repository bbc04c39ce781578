#!/usr/bin/env bash
# Starts HarperDB 4.7.29 (npm, installed as bench/compare and tests/harperdb-suite/reference.sh do)
# on a fresh root in UTC, fills tests/sql_conformance/cases.json with its answers (regen.mjs),
# and stops it by its PID.
#   usage: tests/sql_conformance/regen.sh
# env: HDB_REF_DIR (/tmp/hdb-ref: the npm install), HARPERDB_VERSION (4.7.29), CONF_OPS_PORT (19725).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REF=${HDB_REF_DIR:-/tmp/hdb-ref}
VERSION=${HARPERDB_VERSION:-4.7.29}
OPS=${CONF_OPS_PORT:-19725}
ENTRY="$REF/node_modules/harperdb/bin/harperdb.js"
[ -f "$ENTRY" ] || npm install --no-audit --no-fund --prefix "$REF" "harperdb@$VERSION" || exit 1
RUN=$(mktemp -d /tmp/hdb-conf.XXXXXX)
mkdir -p "$RUN/home" "$RUN/app"
printf 'rest: true\n' >"$RUN/app/config.yaml"
export HDB_ADMIN_USERNAME=${HDB_ADMIN_USERNAME:-admin} HDB_ADMIN_PASSWORD=${HDB_ADMIN_PASSWORD:-Abc1234!}
env TZ=UTC HOME="$RUN/home" TC_AGREEMENT=yes ROOTPATH="$RUN/root" \
  HTTP_PORT=$((OPS + 1)) OPERATIONSAPI_NETWORK_PORT=$OPS MQTT_NETWORK_PORT=$((OPS + 58)) \
  MQTT_NETWORK_SECUREPORT=$((OPS + 59)) REPLICATION_SECUREPORT=$((OPS + 8)) THREADS_COUNT=1 \
  node "$ENTRY" run "$RUN/app" >"$RUN/server.out" 2>&1 &
echo "harperdb pid $!, root $RUN/root"
for _ in $(seq 1 150); do
  curl -fsS -u "$HDB_ADMIN_USERNAME:$HDB_ADMIN_PASSWORD" -H 'Content-Type: application/json' \
    -d '{"operation":"describe_all"}' "http://127.0.0.1:$OPS/" >/dev/null 2>&1 && break
  sleep 0.4
done
TZ=UTC node "$HERE/regen.mjs" "http://127.0.0.1:$OPS"; rc=$?
PID=$(cat "$RUN/root/hdb.pid" 2>/dev/null)
if [ -n "$PID" ]; then
  kill -TERM "$PID"
  for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.2; done
fi
exit $rc
