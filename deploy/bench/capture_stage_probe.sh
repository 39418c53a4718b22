#!/usr/bin/env bash
# The bench's capture-only stage on its own (issue 14 lead): bench.t, bench.gen N 1-row
# transactions into a fresh slot, then `cutover capture` with the bench's config shape until the
# slot is confirmed past the workload. Inside `make bench` the same stage ran 5-6x slower on
# 2026-12-02 (see the issue 13 note). Needs `make up` and one `make bench` run (for bench.gen and
# a *_p1_cap.toml to copy). Usage: BIN=target/release/cutover N=200000 bash deploy/bench/capture_stage_probe.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${BIN:-target/release/cutover}"
CFG_SRC="$(ls -t .local/bench/*_p1_cap.toml | head -1)"
PSQL=(psql -X -q -h 127.0.0.1 -p 5433 -U postgres -d app -v ON_ERROR_STOP=1)
ID=p3probe_$(date +%s)
"${PSQL[@]}" -c "TRUNCATE bench.t"
"${PSQL[@]}" -c "CREATE PUBLICATION $ID FOR TABLE bench.t"
"${PSQL[@]}" -c "SELECT pg_create_logical_replication_slot('$ID','pgoutput')" >/dev/null
# EXTRA="a b": extra slots and publications, as the bench makes three
for x in ${EXTRA:-}; do "${PSQL[@]}" -c "CREATE PUBLICATION ${ID}_$x FOR TABLE bench.t"; "${PSQL[@]}" -c "SELECT pg_create_logical_replication_slot('${ID}_$x','pgoutput')" >/dev/null; done
t0=$(date +%s.%N); "${PSQL[@]}" -c "CALL bench.gen(${N:-200000}, 1)"; echo "gen $(python3 -c "print(round($(date +%s.%N)-$t0,1))") s"
END=$("${PSQL[@]}" -tAc "SELECT pg_current_wal_lsn()")
sed "s/PLACEHOLDER/$ID/; s/^tables = .*/tables = [\"bench.t\"]/; s/^slot = .*/slot = \"$ID\"/; s/^publication = .*/publication = \"$ID\"/; s/^topic_prefix = .*/topic_prefix = \"${ID//_/-}\"/" "$CFG_SRC" > /tmp/$ID.toml
t0=$(date +%s.%N)
$BIN capture --config /tmp/$ID.toml > /tmp/$ID.log 2>&1 &
PID=$!
until [ "$("${PSQL[@]}" -tAc "SELECT confirmed_flush_lsn >= '$END'::pg_lsn FROM pg_replication_slots WHERE slot_name='$ID'")" = t ]; do sleep 0.2; done
t1=$(date +%s.%N)
kill $PID; wait $PID 2>/dev/null || true
python3 -c "print('${N:-200000} 1-row txns in', round($t1-$t0,1), 's ->', round(${N:-200000}/($t1-$t0)), '/s')"
for i in 1 2 3 4 5; do "${PSQL[@]}" -c "SELECT pg_drop_replication_slot('$ID')" >/dev/null 2>&1 && break; sleep 0.5; done
"${PSQL[@]}" -c "DROP PUBLICATION $ID" >/dev/null
