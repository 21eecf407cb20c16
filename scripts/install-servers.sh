#!/usr/bin/env bash
# Installs the production backends the tests start as real servers on 127.0.0.1:
# redis-server (Redis 7) and PostgreSQL 15, the headless browser the dashboard's test
# drives (Chromium and its WebDriver), and promtool (package prometheus: the alert rules'
# check and unit tests), from Debian's packages. Idempotent: does nothing
# when all are present. Without root or apt-get it says what is missing, and the tests
# that need a missing one fail with that message.
# Node.js and npm (the TypeScript SDK's build and tests, the CDK stack's synthesis) come
# from Debian's packages too when missing, but only where Debian's nodejs satisfies the
# SDK's engines field (node >= 20; bookworm's is 18): otherwise it says so, and
# `make sdk-ts` stops with the same advice.
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
[ -x "$PG_BIN/initdb" ] || missing+=(postgresql-15)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v promtool >/dev/null || missing+=(prometheus)

NODE_MIN=20  # sdk/typescript/package.json: "engines": {"node": ">=20"}
major() { local v=${1#v}; v=${v#*:}; echo "${v%%.*}"; }  # v20.1.0, 1:20.19.2+dfsg-1 -> 20
node_ok() { command -v npm >/dev/null && [ "$(major "$(node -v 2>/dev/null)")" -ge $NODE_MIN ] 2>/dev/null; }
node_pkgs=()  # nodejs, then npm unless that nodejs brings its own
if ! node_ok; then
  debian=$(apt-cache policy nodejs 2>/dev/null | awk '/Candidate:/ {print $2}' || true)
  if [ "$(major "$debian")" -ge $NODE_MIN ] 2>/dev/null; then
    node_pkgs=(nodejs npm)
  else
    echo "Node.js $NODE_MIN or newer and npm are needed (the TypeScript SDK, the CDK stack):" \
      "found node $(node -v 2>/dev/null || echo none), npm $(command -v npm >/dev/null && echo yes || echo none)," \
      "and Debian's nodejs here is ${debian:-not available}; install them from nodejs.org" >&2
  fi
fi
[ ${#missing[@]} -eq 0 ] && [ ${#node_pkgs[@]} -eq 0 ] && exit 0

all="${missing[*]} ${node_pkgs[*]}"
all=${all# }
all=${all% }
install() {
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null 2>&1
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  }
}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing $all from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  [ ${#missing[@]} -eq 0 ] || install "${missing[@]}"
  if [ ${#node_pkgs[@]} -gt 0 ]; then
    install nodejs
    command -v npm >/dev/null || install npm
  fi
  # The packages start system-wide services; the tests start their own servers.
  for svc in redis-server postgresql prometheus; do
    command -v service >/dev/null && service "$svc" stop >/dev/null 2>&1 || true
  done
else
  echo "missing: $all (install them from Debian's packages, as root: apt-get install $all)" >&2
fi
