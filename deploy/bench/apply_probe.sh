#!/usr/bin/env bash
# Apply-only probe: fill a topic once (N rows as P-row transactions, captured by `cutover
# capture`), then time `cutover apply` from that topic into an empty target once per value of
# CONNS (`apply_connections`), each on its own consumer group and target database. Used to
# measure sink levers without a whole `make bench`; `PERF=1` records each apply under perf;
# KPROPS adds `[kafka.properties]` lines (e.g. KPROPS='"max.partition.fetch.bytes" = "65536"').
# Usage: N=200000 P=1 PARTS=3 CONNS="1 2 3" deploy/bench/apply_probe.sh   (needs `make up`)
source "$(dirname "${BASH_SOURCE[0]}")/../local/lib.sh"
source "$ROOT/deploy/bench/clusters.sh"
cd "$ROOT"
BIN="${CUTOVER_BIN:-$ROOT/target/release/cutover}"
N="${N:-200000}" P="${P:-1}" PARTS="${PARTS:-3}" CONNS="${CONNS:-1 2 3}"
ID="probe$(date +%s)"
OUT="$STATE/bench/$ID"
mkdir -p "$OUT"
DDL="CREATE TABLE $ID.t (id bigint PRIMARY KEY, qty int, price numeric(10,2), note text, created_at timestamptz DEFAULT clock_timestamp())"
config() { # config FILE CONNS DB
  schema_pipeline_config "$1" "$ID" "$PARTS" "${LOG_LEVEL:-warn}"
  cat >>"$1" <<EOF
[kafka.properties]
${KPROPS:-}
[[sinks]]
name = "applyonly"
url = "postgres://postgres@127.0.0.1:$NEW_PORT/$3"
create_tables = false
apply_connections = $2
EOF
}
cleanup() {
  kill "${cap:-}" 2>/dev/null || true
  sleep 1
  L -c "SELECT pg_drop_replication_slot('$ID')" >/dev/null 2>&1 || true
  L -c "DROP PUBLICATION IF EXISTS $ID" -c "DROP SCHEMA IF EXISTS $ID CASCADE" >/dev/null 2>&1 || true
  drop_topics "$ID\\..*"
}
trap cleanup EXIT
L -c "CREATE SCHEMA $ID" -c "$DDL" -c "CREATE PUBLICATION $ID FOR TABLES IN SCHEMA $ID" \
  -c "SELECT pg_create_logical_replication_slot('$ID', 'pgoutput')" >/dev/null
L -c "DO \$\$ BEGIN FOR i IN 0..($N / $P - 1) LOOP INSERT INTO $ID.t (id, qty, price, note) SELECT i * $P + g, g % 100, (g % 1000) / 10.0, 'order line ' || (i * $P + g) || ' — straße ✓' FROM generate_series(1, $P) g; COMMIT; END LOOP; END \$\$"
end_lsn=$(L -tAc "SELECT pg_current_wal_lsn()")
config "$OUT/capture.toml" 1 postgres
"$BIN" capture --config "$OUT/capture.toml" >"$OUT/capture.log" 2>&1 &
cap=$!
until [ "$(L -tAc "SELECT confirmed_flush_lsn >= '$end_lsn'::pg_lsn FROM pg_replication_slots WHERE slot_name = '$ID'")" = t ]; do sleep 0.2; done
kill "$cap"; wait "$cap" 2>/dev/null || true
i=0
for k in $CONNS; do
  i=$((i + 1))
  db="${ID}_c${k}_$i" # a group and database per round: a repeated value starts from zero too
  T postgres -c "CREATE DATABASE $db" >/dev/null
  T "$db" -c "CREATE SCHEMA $ID" -c "$DDL" >/dev/null
  config "$OUT/apply$k.toml" "$k" "$db"
  sed -i "1s/^name = .*/name = \"$db\"/" "$OUT/apply$k.toml"
  t0=$(now)
  if [ "${PERF:-0}" = 1 ]; then
    perf record -F 199 --call-graph dwarf,16384 -o "$OUT/apply$k.perf" "$BIN" apply --sink applyonly --config "$OUT/apply$k.toml" >"$OUT/apply$k.log" 2>&1 &
  else
    "$BIN" apply --sink applyonly --config "$OUT/apply$k.toml" >"$OUT/apply$k.log" 2>&1 &
  fi
  pid=$!
  while [ "$(T "$db" -tAc "SELECT count(*) FROM $ID.t")" -lt "$N" ]; do
    kill -0 "$pid" 2>/dev/null || { echo "apply exited, see $OUT/apply$k.log"; exit 1; }
    sleep 0.2
  done
  t1=$(now)
  cpu=$(awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$pid/stat" 2>/dev/null || echo 0)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  awk -v n="$N" -v k="$k" -v a="$t0" -v b="$t1" -v c="$cpu" -v p="$P" -v parts="$PARTS" \
    'BEGIN {printf "apply_connections=%s  %d rows (%s-row txns, %s partitions) in %.2f s = %.0f rows/s, sink CPU %.1f s per 1M rows\n", k, n, p, parts, b - a, n / (b - a), c * 1e6 / n}'
  T postgres -c "DROP DATABASE $db" >/dev/null
  # origins are per cluster: do not leave one per probe in max_replication_slots
  T postgres -c "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname LIKE 'cutover:$db:%'" >/dev/null 2>&1 || true
done
