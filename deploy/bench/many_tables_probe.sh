#!/usr/bin/env bash
# Capture-only check of the bench's many-tables stage: TABLES tables in one publication, N
# 1-row transactions spread over them, `cutover capture` until the slot is confirmed past
# the workload, then every table's row count on legacy against the records its topic holds.
# Prints the tables whose counts differ (and exits 1), or "all N rows in Kafka".
# Usage: TABLES=500 N=200000 deploy/bench/many_tables_probe.sh   (needs `make up`)
source "$(dirname "${BASH_SOURCE[0]}")/../local/lib.sh"
source "$ROOT/deploy/bench/clusters.sh"
cd "$ROOT"
BIN="${CUTOVER_BIN:-$ROOT/target/release/cutover}"
TABLES="${TABLES:-500}" N="${N:-200000}" PARTS="${PARTS:-3}"
ID="mtp$(date +%s)"
OUT="$STATE/bench/$ID"
mkdir -p "$OUT"
cleanup() {
  kill "${cap:-}" 2>/dev/null || true
  sleep 1
  L -c "SELECT pg_drop_replication_slot('$ID')" >/dev/null 2>&1 || true
  L -c "DROP PUBLICATION IF EXISTS $ID" -c "DROP SCHEMA IF EXISTS $ID CASCADE" >/dev/null 2>&1 || true
  [ "${KEEP:-0}" = 1 ] || drop_topics "$ID\\..*"
}
trap cleanup EXIT
{
  echo "CREATE SCHEMA $ID;"
  for i in $(seq 0 $((TABLES - 1))); do
    echo "CREATE TABLE $ID.t$i (id bigint PRIMARY KEY, qty int, price numeric(10,2), note text, created_at timestamptz DEFAULT clock_timestamp());"
  done
  echo "CREATE PUBLICATION $ID FOR TABLES IN SCHEMA $ID;"
  echo "SELECT pg_create_logical_replication_slot('$ID', 'pgoutput');"
} | L >/dev/null
L -c "DO \$\$ BEGIN FOR i IN 1..$N LOOP EXECUTE format('INSERT INTO $ID.t%s (id, qty, price, note) VALUES (\$1, \$2, \$3, \$4)', i % $TABLES) USING i, (i % 100)::int, (i % 1000) / 10.0, 'order line ' || i; COMMIT; END LOOP; END \$\$"
end_lsn=$(L -tAc "SELECT pg_current_wal_lsn()")
schema_pipeline_config "$OUT/capture.toml" "$ID" "$PARTS" "${LOG_LEVEL:-info}"
t0=$(date +%s.%N)
"$BIN" capture --config "$OUT/capture.toml" >"$OUT/capture.log" 2>&1 &
cap=$!
until [ "$(L -tAc "SELECT confirmed_flush_lsn >= '$end_lsn'::pg_lsn FROM pg_replication_slots WHERE slot_name = '$ID'")" = t ]; do
  kill -0 "$cap" 2>/dev/null || { echo "capture exited, see $OUT/capture.log"; exit 1; }
  sleep 0.2
done
echo "captured in $(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $t0}") s (slot confirmed past the workload)"
kill "$cap"; wait "$cap" 2>/dev/null || true
for i in $(seq 0 $((TABLES - 1))); do echo "SELECT 't$i', count(*) FROM $ID.t$i UNION ALL"; done \
  | sed '$ s/UNION ALL$//' | L -tA -F ' ' >"$OUT/source.txt"
"$VENV/bin/python" - "$ID" "127.0.0.1:$KAFKA_PORT" "$PARTS" "$OUT/source.txt" <<'PY'
import sys
from confluent_kafka import Consumer, TopicPartition
prefix, bs, parts, source = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = Consumer({"bootstrap.servers": bs, "group.id": prefix + "-count"})
bad = 0
total = 0
for line in open(source):
    t, n = line.split()
    topic = f"{prefix}.{prefix}.{t}"
    got = 0
    for p in range(parts):
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        got += hi - lo
    total += got
    if got != int(n):
        bad += 1
        print(f"{topic}: {n} rows on legacy, {got} records in Kafka")
print(f"{total} records in Kafka" + ("" if bad == 0 else f", {bad} table(s) differ"))
sys.exit(1 if bad else 0)
PY
