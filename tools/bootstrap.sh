#!/usr/bin/env bash
# Makes a machine ready for `make test` and `make run`: installs what is missing and starts
# PostgreSQL, Redis and RabbitMQ when they do not answer. Safe to run again; quick when all is there.
#
# Used by the Makefile (targets `bootstrap`, `test`, `run`) and by CI. Honours the servers the tests
# are pointed at (BILLING_TEST_*_URL): a server is only started when the default local one is meant.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'bootstrap: %s\n' "$*" >&2; }

# --- system packages (Debian/Ubuntu, as root) ------------------------------------------------
need_apt=()
command -v make >/dev/null || need_apt+=(make)
command -v npm >/dev/null || need_apt+=(npm)
command -v pg_ctlcluster >/dev/null || need_apt+=(postgresql)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v rabbitmq-server >/dev/null || need_apt+=(rabbitmq-server)
# The console's browser tests drive Debian's chromium (Playwright, no browser download).
command -v chromium >/dev/null || need_apt+=(chromium)
command -v python3.11 >/dev/null || need_apt+=(python3.11 python3.11-venv)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    log "missing: ${need_apt[*]}; install them (or run this as root on Debian/Ubuntu)"
    exit 1
  fi
  log "installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# --- uv, into the project's tool folder when it is not on PATH --------------------------------
if ! command -v uv >/dev/null && [ ! -x .tools/uv/bin/uv ]; then
  log "installing uv into .tools/uv"
  python3 -m pip install --quiet --disable-pip-version-check --target .tools/uv uv
fi

# --- servers -----------------------------------------------------------------------------------
is_default() { [ -z "${1:-}" ] || [[ "$1" == *"127.0.0.1:$2"* ]] || [[ "$1" == *"localhost:$2"* ]]; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

started=()
if is_default "${BILLING_TEST_POSTGRES_URL:-}" 5432 && ! port_open 5432; then
  version="$(ls /etc/postgresql | sort -V | tail -1)"
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  started+=(postgres)
fi
if is_default "${BILLING_TEST_REDIS_URL:-}" 6379 && ! port_open 6379; then
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  started+=(redis)
fi
if is_default "${BILLING_TEST_AMQP_URL:-}" 5672 && ! port_open 5672; then
  log "starting RabbitMQ"
  rabbitmq-server -detached
  started+=(rabbitmq)
fi
up() {
  case "$1" in
    postgres) port_open 5432 ;;
    redis) port_open 6379 ;;
    rabbitmq) rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1 ;;
  esac
}
for server in "${started[@]}"; do
  for _ in $(seq 1 90); do
    up "$server" && break
    sleep 2
  done
  up "$server" || { log "$server did not come up within 3 minutes"; exit 1; }
done
