#!/usr/bin/env bash
# The local stack: legacy PostgreSQL (5433), new PostgreSQL (5434), Apache Kafka in KRaft mode
# (9092, controller 9093) and the embedded schema registry (8081). Usage: stack.sh up|down|status|restart-broker|destroy
# Idempotent and safe to re-run; works as root (clusters run as the postgres user) and as a
# normal user. Data lives under $STATE (default <repo>/.local). The system cluster on 5432 is
# never touched.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PGBIN="$(pg_bindir)" || die "PostgreSQL server binaries not found (run deploy/local/bootstrap.sh)"

pg_dir() { echo "$STATE/pg/$1"; }
pg_port() { if [ "$1" = legacy ]; then echo "$LEGACY_PORT"; else echo "$NEW_PORT"; fi; }
psql_at() { local port=$1; shift; "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 "$@"; }

pg_running() { as_pg "$PGBIN/pg_ctl" -D "$(pg_dir "$1")" status >/dev/null 2>&1; }

pg_up() {
  local name=$1 dir port
  dir="$(pg_dir "$name")"; port="$(pg_port "$name")"
  mkdir -p "$STATE/pg"
  if is_root; then chown postgres:postgres "$STATE/pg"; fi
  if [ ! -f "$dir/PG_VERSION" ]; then
    log "initialising $name cluster in $dir"
    as_pg "$PGBIN/initdb" -D "$dir" -U postgres --auth=trust --encoding=UTF8 --no-locale >/dev/null
    cat >> "$dir/postgresql.conf" <<CONF

# ---- cutover local stack ($name) ----
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
wal_level = logical
max_replication_slots = 32
max_wal_senders = 32
max_connections = 200
track_commit_timestamp = on
shared_buffers = 128MB
wal_sender_timeout = 60s
logging_collector = off
log_min_messages = warning
CONF
    if is_root; then chown postgres:postgres "$dir/postgresql.conf"; fi
  fi
  if pg_running "$name"; then
    log "$name PostgreSQL already running on 127.0.0.1:$port"
  else
    if port_open "$port"; then die "port $port is taken by another process (another checkout's stack? run make down there); stop it or set CUTOVER_${name^^}_PORT"; fi
    log "starting $name PostgreSQL on 127.0.0.1:$port"
    as_pg "$PGBIN/pg_ctl" -D "$dir" -l "$STATE/pg/$name.log" -w -t 60 start >/dev/null \
      || { tail -20 "$STATE/pg/$name.log" >&2; die "$name PostgreSQL did not start"; }
  fi
  wait_for 30 "$name PostgreSQL" "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$port" || die "$name PostgreSQL does not answer"
}

pg_down() {
  local name=$1
  if [ -f "$(pg_dir "$name")/PG_VERSION" ] && pg_running "$name"; then
    log "stopping $name PostgreSQL"
    as_pg "$PGBIN/pg_ctl" -D "$(pg_dir "$name")" -m fast -w -t 60 stop >/dev/null
  fi
}

create_db() { # create_db PORT NAME
  if [ -z "$(psql_at "$1" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$2'")" ]; then
    log "creating database $2 on port $1"
    psql_at "$1" -d postgres -c "CREATE DATABASE \"$2\""
  fi
}

broker_up() {
  local dir="$STATE/kafka"
  mkdir -p "$dir"
  if pid_alive "$dir/kafka.pid"; then
    log "Kafka already running on 127.0.0.1:$KAFKA_PORT"
  else
    for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
      if port_open "$p"; then die "port $p is taken by another process (another checkout's stack? run make down there)"; fi
    done
    log "starting Apache Kafka $KAFKA_VERSION (KRaft) on 127.0.0.1:$KAFKA_PORT (data in $dir/data)"
    # run.sh execs the JVM: $! is the broker's pid, and no shell keeps the caller's stdout open.
    # setsid: a session of its own, so a signal to the caller's process group (Ctrl-C or a
    # SIGTERM to `make demo`) stops the caller, not the stack it started.
    setsid nohup bash "$ROOT/deploy/local/kafka/run.sh" "$dir" "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" \
      </dev/null >>"$dir/stdout.log" 2>&1 &
    echo $! > "$dir/kafka.pid"
  fi
  kafka_ready 90 || { tail -20 "$dir/server.log" "$dir/stdout.log" >&2 2>/dev/null; die "Kafka does not answer a metadata request"; }
  log "Kafka is up"
}

# Ready = the broker answers a metadata request (stock Python client from the venv).
kafka_ready() { "$VENV/bin/python" "$ROOT/deploy/local/kafka/ready.py" "127.0.0.1:$KAFKA_PORT" "$1" 2>/dev/null; }

stop_pidfile() { # stop_pidfile FILE NAME [SECS] — SIGTERM, SIGKILL only if it outlives SECS (default 10)
  local f=$1 name=$2 secs=${3:-10} pid i
  pid_alive "$f" || { rm -f "$f"; return 0; }
  pid=$(cat "$f")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 $((secs * 5))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then log "$name did not stop within ${secs}s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
  rm -f "$f"
}

registry_up() {
  local dir="$STATE/registry"
  mkdir -p "$dir"
  log "building cutover (for the embedded registry)"
  ( cd "$ROOT" && cargo build --quiet --bin cutover )
  local stamp; stamp="$(stat -c %Y "$STACK_BIN")"
  if pid_alive "$dir/registry.pid" && [ "$(cat "$dir/registry.stamp" 2>/dev/null)" != "$stamp" ]; then
    log "cutover was rebuilt: restarting the registry on the new binary"
    stop_pidfile "$dir/registry.pid" "schema registry"
  fi
  if pid_alive "$dir/registry.pid"; then
    log "registry already running on 127.0.0.1:$REGISTRY_PORT"
  else
    if port_open "$REGISTRY_PORT"; then die "port $REGISTRY_PORT is taken by another process (another checkout's stack? run make down there)"; fi
    echo "$stamp" > "$dir/registry.stamp"
    log "starting schema registry on 127.0.0.1:$REGISTRY_PORT"
    setsid nohup "$STACK_BIN" registry --listen "127.0.0.1:$REGISTRY_PORT" --data-dir "$dir" \
      </dev/null >>"$dir/registry.log" 2>&1 &
    echo $! > "$dir/registry.pid"
  fi
  wait_for 30 "schema registry" curl -sf "http://127.0.0.1:$REGISTRY_PORT/subjects" \
    || { tail -20 "$dir/registry.log" >&2; die "registry does not answer"; }
}

status_line() { # NAME ADDRESS UP?
  printf '  %-18s %-28s %s\n' "$1" "$2" "$3"
}

status() {
  echo "cutover local stack (data in $STATE)"
  local s
  for n in legacy new; do
    if [ -f "$(pg_dir "$n")/PG_VERSION" ] && pg_running "$n"; then s=running; else s=stopped; fi
    status_line "postgres $n" "127.0.0.1:$(pg_port "$n")" "$s"
  done
  if pid_alive "$STATE/kafka/kafka.pid" && kafka_ready 2; then s=running; else s=stopped; fi
  status_line "kafka $KAFKA_VERSION" "127.0.0.1:$KAFKA_PORT" "$s"
  if curl -sf "http://127.0.0.1:$REGISTRY_PORT/subjects" >/dev/null 2>&1; then s=running; else s=stopped; fi
  status_line "schema registry" "http://127.0.0.1:$REGISTRY_PORT" "$s"
}

# Replication slots and origins that integration tests left behind when they failed before
# their cleanup (names are <tag>_<pid>_<millis>_<n>, see tests/it/support.rs unique()). Each
# holds one of a cluster's max_replication_slots, so a few failed runs would exhaust them.
# Only objects whose test process is gone are dropped; a user's own pipelines never match.
sweep_tests() {
  local port db name pid n=0
  for port in "$LEGACY_PORT" "$NEW_PORT"; do
    while IFS='|' read -r db name; do
      [ -n "$name" ] || continue
      # Test ids are <word>[_<word>...]_<pid>_<n>_<n>; a word may carry digits (static848).
      pid="$(sed -E 's/^[a-z][a-z0-9]*(_[a-z][a-z0-9]*)*_([0-9]+)_[0-9]+_[0-9]+.*$/\2/' <<<"$name")"
      [ -d "/proc/$pid" ] && continue
      psql_at "$port" -d "$db" -tAc "SELECT pg_drop_replication_slot('$name')" >/dev/null 2>&1 && n=$((n + 1))
    done < <(psql_at "$port" -d postgres -tAc "SELECT database, slot_name FROM pg_replication_slots
               WHERE NOT active AND slot_name ~ '^[a-z][a-z0-9]*(_[a-z][a-z0-9]*)*_[0-9]+_[0-9]+_[0-9]+(_[a-z]+)?$'")
    while read -r name; do
      [ -n "$name" ] || continue
      # The test id is the pipeline (cutover:<id>:<sink>) or the instance id
      # (cutover:<pipeline>:<sink>:<id>[.<sink>]); its second field is the test's pid.
      pid="$(sed -E 's/^(.*:)?[a-z][a-z0-9]*(_[a-z]+)*_([0-9]+)_[0-9]+_[0-9]+([.:].*)?$/\3/' <<<"$name")"
      [ -d "/proc/$pid" ] && continue
      psql_at "$port" -d postgres -tAc "SELECT pg_replication_origin_drop('$name')" >/dev/null 2>&1 && n=$((n + 1))
    done < <(psql_at "$port" -d postgres -tAc "SELECT roname FROM pg_replication_origin
               WHERE roname ~ '^cutover:(.*:)?[a-z][a-z0-9]*(_[a-z]+)*_[0-9]+_[0-9]+_[0-9]+([.:].*)?$'")
  done
  log "swept $n replication slots/origins left by earlier test runs"
}

case "${1:-}" in
  sweep-tests)
    sweep_tests
    ;;
  up)
    pg_up legacy
    pg_up new
    create_db "$LEGACY_PORT" app
    create_db "$NEW_PORT" app
    create_db "$NEW_PORT" newapp
    broker_up
    registry_up
    echo
    echo "local stack is up:"
    echo "  legacy PostgreSQL  postgres://postgres@127.0.0.1:$LEGACY_PORT/app"
    echo "  new PostgreSQL     postgres://postgres@127.0.0.1:$NEW_PORT/app  and  .../newapp"
    echo "  Apache Kafka       127.0.0.1:$KAFKA_PORT (KRaft, $KAFKA_VERSION)"
    echo "  schema registry    http://127.0.0.1:$REGISTRY_PORT"
    echo "  logs               $STATE/{pg/*.log,kafka/server.log,registry/registry.log}"
    ;;
  down)
    stop_pidfile "$STATE/registry/registry.pid" "schema registry"
    stop_pidfile "$STATE/kafka/kafka.pid" "Kafka" 60
    pg_down new
    pg_down legacy
    log "local stack is down (data kept in $STATE)"
    ;;
  restart-broker)
    stop_pidfile "$STATE/kafka/kafka.pid" "Kafka" 60
    broker_up
    ;;
  status)
    out="$(status)"; echo "$out"
    ! grep -q stopped <<<"$out"
    ;;
  destroy)
    "$0" down
    log "deleting stack data (clusters, broker log, registry)"
    rm -rf "$STATE/pg" "$STATE/kafka" "$STATE/registry"
    ;;
  *)
    echo "usage: $0 up|down|status|restart-broker|destroy|sweep-tests" >&2
    exit 2
    ;;
esac
