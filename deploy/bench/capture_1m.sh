#!/usr/bin/env bash
# Measure capture throughput (events/s into the local broker, acknowledged) and peak RSS of
# `cutover capture` (release build) through one 1M-row transaction. Needs `make up`.
# Usage: deploy/bench/capture_1m.sh [ROWS]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS="${1:-1000000}"
ID="bench_$(date +%s)"
PSQL=(psql -X -q -h 127.0.0.1 -p "${CUTOVER_LEGACY_PORT:-5433}" -U postgres -d app -v ON_ERROR_STOP=1)
# CUTOVER_BIN: a given binary (bench.sh passes its own, e.g. to compare two builds).
BIN="${CUTOVER_BIN:-target/release/cutover}"
[ -n "${CUTOVER_BIN:-}" ] || cargo build --quiet --release --bin cutover
"${PSQL[@]}" -c "CREATE TABLE $ID (id int PRIMARY KEY, qty int, price numeric(10,2), note text)"
export CUTOVER__SOURCE__SLOT=$ID CUTOVER__SOURCE__PUBLICATION=$ID CUTOVER__SOURCE__SCHEMAS="" \
  CUTOVER__SOURCE__TABLES="public.$ID" CUTOVER__TOPIC_PREFIX="${ID//_/-}" CUTOVER__OBSERVE__LISTEN="" \
  CUTOVER__SOURCE__STATUS_INTERVAL_SECS=1
"$BIN" capture >/tmp/$ID.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; "${PSQL[@]}" -c "SELECT pg_drop_replication_slot('"'"'$ID'"'"')" >/dev/null 2>&1; "${PSQL[@]}" -c "DROP PUBLICATION IF EXISTS $ID; DROP TABLE IF EXISTS $ID" >/dev/null 2>&1' EXIT
until [ "$("${PSQL[@]}" -tAc "SELECT count(*) FROM pg_replication_slots WHERE slot_name='$ID' AND active")" = 1 ]; do sleep 0.2; done
start=$(date +%s.%N)
"${PSQL[@]}" -c "INSERT INTO $ID SELECT g, g % 100, g / 100.0, 'row ' || g FROM generate_series(1, $ROWS) g"
committed=$(date +%s.%N)
END=$("${PSQL[@]}" -tAc "SELECT pg_current_wal_lsn()")
until [ "$("${PSQL[@]}" -tAc "SELECT confirmed_flush_lsn >= '$END'::pg_lsn FROM pg_replication_slots WHERE slot_name='$ID'")" = t ]; do sleep 0.2; done
done_at=$(date +%s.%N)
hwm=$(awk '/VmHWM/ {print $2}' /proc/$PID/status)
python3 - "$ROWS" "$start" "$committed" "$done_at" "$hwm" <<'PY'
import sys
rows, start, committed, done, hwm = int(sys.argv[1]), *map(float, sys.argv[2:5]), int(sys.argv[5])
print(f"rows={rows} insert+commit={committed-start:.1f}s captured_after_commit={done-committed:.1f}s "
      f"throughput={rows/(done-committed):,.0f} events/s (acknowledged by the broker) peak_rss={hwm/1024:.1f} MiB")
PY
