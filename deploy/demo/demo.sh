#!/usr/bin/env bash
# make demo: the local stack, a realistic legacy shop in `app`, the new contract in `newapp`,
# `cutover run` (capture + mirror + newstore sinks), a steady write workload on legacy, and a
# live view of what is happening — until Ctrl-C (or DEMO_SECONDS, for scripted runs).
source "$(dirname "${BASH_SOURCE[0]}")/../local/lib.sh"

PGBIN="$(pg_bindir)"
DEMO="$STATE/demo"
METRICS="http://127.0.0.1:9464/metrics"
RATE_MS="${DEMO_ROUND_MS:-500}"      # one workload round (≈ 85 row changes) every RATE_MS
mkdir -p "$DEMO"
psql_db() { local port=$1 db=$2; shift 2; "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d "$db" -v ON_ERROR_STOP=1 "$@"; }

bash "$ROOT/deploy/local/stack.sh" up >/dev/null
psql_db "$LEGACY_PORT" app -f "$ROOT/deploy/demo/legacy.sql" 2>/dev/null
psql_db "$NEW_PORT" newapp -f "$ROOT/deploy/demo/newapp.sql" 2>/dev/null

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  log "stopping the workload and cutover (SIGTERM: the batch in flight is committed first)"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  log "cutover log: $DEMO/run.log"
}
trap cleanup INT TERM EXIT

"$STACK_BIN" run >"$DEMO/run.log" 2>&1 &
pids+=($!)

(
  round=$(psql_db "$LEGACY_PORT" app -tAc "SELECT coalesce(max(id), 0) / 10 + 1 FROM customers")
  while true; do
    psql_db "$LEGACY_PORT" app -v round="$round" -f "$ROOT/deploy/demo/workload.sql" >/dev/null 2>>"$DEMO/workload.log" || true
    round=$((round + 1))
    sleep "$(awk "BEGIN {print $RATE_MS / 1000}")"
  done
) &
pids+=($!)

metric_sum() { # metric_sum NAME [LABEL_FILTER]: sum of the series of NAME matching the filter
  curl -fsS "$METRICS" 2>/dev/null | awk -v n="$1" -v f="${2:-}" \
    '$1 ~ "^"n"({|$)" && index($1, f) { s += $NF } END { printf "%d", s }'
}
count() { psql_db "$1" "$2" -tAc "SELECT $3" 2>/dev/null || echo "?"; }

log "cutover run started; metrics at $METRICS, health at http://127.0.0.1:9464/readyz"
log "legacy writes every ${RATE_MS} ms; Ctrl-C to stop"
start=$(date +%s)
printf '\n%-8s %10s %10s %10s %8s %8s %6s   %s\n' time captured mirror newstore lag_m lag_n dlq "rows customers legacy/mirror/newstore"
while true; do
  sleep 2
  now=$(date +%s)
  cap=$(metric_sum cutover_capture_events_total)
  mir=$(metric_sum cutover_sink_events_applied_total 'sink="mirror"')
  new=$(metric_sum cutover_sink_events_applied_total 'sink="newstore"')
  lagm=$(metric_sum cutover_sink_lag_messages 'sink="mirror"')
  lagn=$(metric_sum cutover_sink_lag_messages 'sink="newstore"')
  dlq=$(( $(metric_sum cutover_sink_dlq_events_total) + $(metric_sum cutover_capture_dlq_events_total) ))
  rows="$(count "$LEGACY_PORT" app 'count(*) FROM customers')/$(count "$NEW_PORT" app 'count(*) FROM public.customers')/$(count "$NEW_PORT" newapp 'count(*) FROM crm.clients')"
  printf '%-8s %10s %10s %10s %8s %8s %6s   %s\n' "+$((now - start))s" "$cap" "$mir" "$new" "$lagm" "$lagn" "$dlq" "$rows"
  if [ -n "${DEMO_SECONDS:-}" ] && [ $((now - start)) -ge "$DEMO_SECONDS" ]; then break; fi
done
