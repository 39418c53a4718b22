#!/usr/bin/env bash
# Measure one reconcile pass over a table of ROWS rows that agree on both sides (release
# build, unthrottled and at the default budget's scale), against a peer measured in the same
# run: reading the table out of both clusters with COPY ... TO STDOUT (what any comparison
# must at least read). Needs `make up`. Usage: deploy/bench/reconcile_1m.sh [ROWS]
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/local/lib.sh
source deploy/bench/clusters.sh
ROWS="${1:-1000000}"
ID="recon_$(date +%s)"
BIN="${CUTOVER_BIN:-target/release/cutover}"
[ -n "${CUTOVER_BIN:-}" ] || cargo build --quiet --release --bin cutover
DDL="CREATE SCHEMA $ID; CREATE TABLE $ID.t (id bigint PRIMARY KEY, qty int, price numeric(10,2), note text);
     INSERT INTO $ID.t SELECT g, g % 100, g / 100.0, 'row ' || g FROM generate_series(1, $ROWS) g; ANALYZE $ID.t;"
L -c "$DDL"
T app -c "$DDL"
trap 'L -c "DROP SCHEMA IF EXISTS $ID CASCADE" >/dev/null 2>&1; T app -c "DROP SCHEMA IF EXISTS $ID CASCADE; DELETE FROM cutover.reconcile_passes WHERE source_table = '"'"'$ID.t'"'"'" >/dev/null 2>&1' EXIT
CFG=$(mktemp)
schema_pipeline_config "$CFG" "$ID" 1 warn
cat >>"$CFG" <<CFG
[reconcile]
rows_per_sec = 0
chunk_rows = 10000
min_recheck_secs = 1
[[sinks]]
name = "mirror"
url = "postgres://postgres@127.0.0.1:$NEW_PORT/app"
CFG
t0=$(now)
L -c "COPY $ID.t TO STDOUT" >/dev/null
T app -c "COPY $ID.t TO STDOUT" >/dev/null
t1=$(now)
"$BIN" reconcile --once --config "$CFG"
t2=$(now)
python3 - "$ROWS" "$t0" "$t1" "$t2" <<'PY'
import sys
rows, t0, t1, t2 = int(sys.argv[1]), *map(float, sys.argv[2:5])
peer, rec = t1 - t0, t2 - t1
print(f"rows={rows} copy_out_both_sides_s={peer:.2f} reconcile_pass_s={rec:.2f} "
      f"reconcile_rows_per_s={rows / rec:,.0f} ratio_to_copy_out={rec / peer:.2f}")
PY
