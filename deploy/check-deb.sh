#!/usr/bin/env bash
# Installs the Debian package on this machine and checks what deploy/README.md promises, then
# removes it again: run as root on a machine you may install packages on (it creates the
# `tidepool` user and writes /usr/bin, /etc/tidepool, /lib/systemd/system and /var/lib/tidepool).
#   usage: deploy/check-deb.sh [path/to/tidepool_*.deb]   (default: target/debian/tidepool_*.deb,
#          built first with `cargo deb` when missing)
# env: CHECK_PORT (19795): the Operations API port of the trial run; the next three ports serve
# REST and MQTT (plain and TLS), all on 127.0.0.1, so nothing else on the machine is disturbed.
# The result of its last run is in deploy/README.md ("Checking the package").
set -u
cd "$(dirname "$0")/.."
PORT=${CHECK_PORT:-19795}
DEB=${1:-$(ls target/debian/tidepool_*.deb 2>/dev/null | tail -1)}
if [ -z "$DEB" ]; then
  cargo deb || exit 1
  DEB=$(ls target/debian/tidepool_*.deb | tail -1)
fi
[ "$(id -u)" = 0 ] || { echo "run as root"; exit 1; }
if dpkg-query -W tidepool >/dev/null 2>&1; then
  echo "tidepool is installed already; remove it first (dpkg -r tidepool)"; exit 1
fi
fails=0
check() { # description, command...
  local what=$1; shift
  if "$@" >/dev/null 2>&1; then echo "ok    $what"; else echo "FAIL  $what"; fails=$((fails + 1)); fi
}

echo "== dpkg -i $DEB"
dpkg -i "$DEB" || exit 1
check "binary /usr/bin/tidepool runs" /usr/bin/tidepool --version
check "unit /lib/systemd/system/tidepool.service" test -f /lib/systemd/system/tidepool.service
check "configuration /etc/tidepool/harperdb-config.yaml" test -f /etc/tidepool/harperdb-config.yaml
check "application /etc/tidepool/app" test -f /etc/tidepool/app/schema.graphql
conffiles=$(dpkg-query -W -f='${Conffiles}' tidepool)
for f in /etc/tidepool/harperdb-config.yaml /etc/tidepool/app/config.yaml /etc/tidepool/app/schema.graphql; do
  check "conffile $f" grep -q "$f" <<<"$conffiles"
done
check "system user tidepool (postinst)" id tidepool
check "/var/lib/tidepool owned by tidepool, mode 750" \
  test "$(stat -c '%U %a' /var/lib/tidepool)" = "tidepool 750"
check "configuration writable by tidepool (set_configuration)" \
  test "$(stat -c '%U' /etc/tidepool/harperdb-config.yaml)" = tidepool
if command -v systemd-analyze >/dev/null; then
  check "systemd-analyze verify of the installed unit" \
    systemd-analyze verify /lib/systemd/system/tidepool.service
fi

echo "== the installed binary started as the unit starts it (user tidepool, its environment)"
OUT=$(mktemp)
env -i PATH=/usr/bin:/bin ROOTPATH=/var/lib/tidepool HDB_CONFIG=/etc/tidepool/harperdb-config.yaml \
  HDB_ADMIN_USERNAME=admin HDB_ADMIN_PASSWORD='Check-deb-1' \
  setpriv --reuid tidepool --regid tidepool --clear-groups \
  /usr/bin/tidepool run /etc/tidepool/app \
  --OPERATIONSAPI_NETWORK_PORT 127.0.0.1:$PORT --HTTP_PORT 127.0.0.1:$((PORT + 1)) \
  --MQTT_NETWORK_PORT 127.0.0.1:$((PORT + 2)) --MQTT_NETWORK_SECUREPORT 127.0.0.1:$((PORT + 3)) \
  >"$OUT" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$((PORT + 1))/health" >/dev/null 2>&1 && break
  sleep 0.2
done
check "/health answers" curl -fsS "http://127.0.0.1:$((PORT + 1))/health"
check "a REST write as the admin" curl -fsS -u admin:Check-deb-1 -X PUT \
  -H 'Content-Type: application/json' -d '{"name":"Rex"}' "http://127.0.0.1:$((PORT + 1))/Dog/deb1"
check "the write reads back" curl -fsS -u admin:Check-deb-1 "http://127.0.0.1:$((PORT + 1))/Dog/deb1"
check "data under /var/lib/tidepool/database" test -d /var/lib/tidepool/database
check "the configuration was not rewritten" cmp -s /etc/tidepool/harperdb-config.yaml deploy/harperdb-config.yaml
kill -TERM "$PID"
wait "$PID"
check "SIGTERM stops it with status 0" test $? = 0
sed 's/^/    | /' "$OUT" | head -12
rm -f "$OUT"

echo "== an edited conffile survives reinstalling, removing keeps it, purging removes all"
echo "# edited by check-deb.sh" >>/etc/tidepool/harperdb-config.yaml
dpkg -i --force-confold "$DEB" >/dev/null 2>&1
check "edit kept over a reinstall" grep -q "edited by check-deb.sh" /etc/tidepool/harperdb-config.yaml
dpkg -r tidepool >/dev/null
check "binary gone after dpkg -r" test ! -e /usr/bin/tidepool
check "configuration kept after dpkg -r" test -f /etc/tidepool/harperdb-config.yaml
check "data kept after dpkg -r" test -d /var/lib/tidepool/database
dpkg -P tidepool >/dev/null
check "configuration gone after dpkg -P" test ! -e /etc/tidepool/harperdb-config.yaml
check "data gone after dpkg -P (postrm)" test ! -e /var/lib/tidepool
check "user gone after dpkg -P (postrm)" sh -c '! id tidepool'

echo "== $fails failed"
[ "$fails" = 0 ]
