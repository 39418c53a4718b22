# Shared settings for the local-stack scripts. Sourced, not executed.
# Everything lives under $CUTOVER_STACK_DIR (default: <repo>/.local, git-ignored).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${CUTOVER_STACK_DIR:-$ROOT/.local}"
LEGACY_PORT="${CUTOVER_LEGACY_PORT:-5433}"
NEW_PORT="${CUTOVER_NEW_PORT:-5434}"
KAFKA_PORT="${CUTOVER_KAFKA_PORT:-9092}"
REGISTRY_PORT="${CUTOVER_REGISTRY_PORT:-8081}"
KAFKA_CONTROLLER_PORT="${CUTOVER_KAFKA_CONTROLLER_PORT:-9093}"
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
# Apache Kafka: the version is pinned in deploy/local/kafka/pom.xml only; its jars are cached
# outside the checkout (~/.m2 survives between CI runs and checkouts).
KAFKA_VERSION="$(sed -nE 's#.*<kafka.version>([^<]+)</kafka.version>.*#\1#p' "$ROOT/deploy/local/kafka/pom.xml")"
KAFKA_HOME="${CUTOVER_KAFKA_HOME:-$HOME/.m2/cutover-kafka/$KAFKA_VERSION}"
VENV="$STATE/venv"
# The debug build the stack runs (the embedded registry, the demo). Not the benchmarked binary:
# bench.sh takes CUTOVER_BIN from the environment and defaults to the release build.
STACK_BIN="$ROOT/target/debug/cutover"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

pg_bindir() {
  if [ -x /usr/lib/postgresql/15/bin/initdb ]; then
    echo /usr/lib/postgresql/15/bin
  elif command -v pg_config >/dev/null && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir
  else
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
    [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d" || return 1
  fi
}

# Run a PostgreSQL server binary as the right user: initdb refuses to run as root.
as_pg() {
  if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # wait_for SECONDS DESCRIPTION CMD...
  local secs=$1 what=$2; shift 2
  local i=0
  until "$@" >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -ge $((secs * 5)) ] && return 1
    sleep 0.2
  done
  log "$what is up"
}
