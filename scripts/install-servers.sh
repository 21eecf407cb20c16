#!/usr/bin/env bash
# Installs the production backends the tests start as real servers on 127.0.0.1:
# redis-server (Redis 7) and PostgreSQL 15, and the headless browser the dashboard's test
# drives (Chromium and its WebDriver), from Debian's packages. Idempotent: does nothing
# when all are present. Without root or apt-get it says what is missing, and the tests
# that need a missing one fail with that message.
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x "$PG_BIN/initdb" ] || missing+=(postgresql-15)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing ${missing[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null 2>&1
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  }
  # The packages start system-wide services; the tests start their own servers.
  for svc in redis-server postgresql; do
    command -v service >/dev/null && service "$svc" stop >/dev/null 2>&1 || true
  done
else
  echo "missing: ${missing[*]} (install them from Debian's packages, as root: apt-get install ${missing[*]})" >&2
fi
