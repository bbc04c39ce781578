#!/usr/bin/env bash
# Prepares HarperDB's API test suite for run.sh (never commit what it writes).
#   usage: setup.sh HARPER_GIT_DIR [COMMIT]   (a clone of github.com/HarperFast/harper; bare is fine)
# Writes $HDB_SUITE_DIR (default /tmp/hdb-suite): integrationTests/apiTests from COMMIT (default
# 7089fcf), its npm dependencies, the host/port patch of its env config, and an empty app.
set -eu
GIT=${1:?usage: setup.sh HARPER_GIT_DIR [COMMIT]}
COMMIT=${2:-7089fcf}
SUITE=${HDB_SUITE_DIR:-/tmp/hdb-suite}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$SUITE"
# File by file: a snapshot may lack some blobs (7089fcf's data/movies.csv and data/credits.csv
# are absent from the stored mirror; HarperDB itself then fails the 5 tests that load them).
git -C "$GIT" ls-tree -r --name-only "$COMMIT" integrationTests/apiTests | while read -r f; do
  mkdir -p "$SUITE/$(dirname "$f")"
  git -C "$GIT" show "$COMMIT:$f" >"$SUITE/$f" 2>/dev/null || { echo "absent: $f"; rm -f "$SUITE/$f"; }
done
# The env config hard-codes localhost:9925/9926; let HARPER_* variables choose host and ports.
cfg="$SUITE/integrationTests/apiTests/config/envConfig.mjs"
sed -i \
  -e "s|'host': 'http://localhost'|'host': process.env.HARPER_HOST ?? 'http://localhost'|" \
  -e "s|'port': '9925'|'port': process.env.HARPER_PORT ?? '9925'|" \
  -e "s|'portRest': '9926'|'portRest': process.env.HARPER_PORT_REST ?? '9926'|" \
  -e "s|'secureHost': 'https://localhost'|'secureHost': process.env.HARPER_SECURE_HOST ?? 'https://localhost'|" \
  -e "s|'securePort': '9943'|'securePort': process.env.HARPER_SECURE_PORT ?? '9943'|" \
  -e "s|'securePortRest': '9953'|'securePortRest': process.env.HARPER_SECURE_PORT_REST ?? '9953'|" \
  "$cfg"
grep -c 'process.env.HARPER_' "$cfg" | grep -qx 6 || { echo "envConfig.mjs patch did not apply"; exit 1; }
cp "$HERE/package.json" "$SUITE/integrationTests/package.json"
(cd "$SUITE/integrationTests" && npm install --no-audit --no-fund)
mkdir -p "$SUITE/app"
printf '# Empty app: the suite creates its tables through the Operations API.\nrest: true\n' >"$SUITE/app/config.yaml"
echo "suite ready in $SUITE"
