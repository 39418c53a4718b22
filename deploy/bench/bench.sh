#!/usr/bin/env bash
# make bench: BENCH_RUNS runs (default 3) of every stage below; deploy/bench/report.py prints the
# medians (min–max) and the issue-14 targets table (target, measured, ratio, met/missed) and
# writes .local/bench/results.{txt,json} (copy them to docs/bench/latest.* to publish a run).
#  (a) catch-up: BENCH_ROWS changes (default 200k) pre-generated on legacy with the slots in
#      place, as 1-row and as 100-row transactions; time cutover (capture + mirror sink) until the
#      target holds every row, and PostgreSQL native logical replication (CREATE SUBSCRIPTION)
#      on the same workload. Also capture-only (acknowledged by the broker), apply-only (from the
#      filled topic) and the broker's raw produce/consume ceiling for the same message size.
#  (b) steady state: each of BENCH_RATES rows/s (default "2000 20000") for BENCH_SECS (default
#      60), after a warm-up outside the measured rows; commit → applied latency percentiles
#      (applied_at default on the target − created_at on legacy), per-row CSV for plot.py
#      (docs/bench/steady-latency.png, steady-throughput.png).
#  (c) peak RSS of `cutover capture` through a BENCH_RSS_ROWS-row transaction (default 1M), and
#      (first run only) through BENCH_RSS_BIG_ROWS rows (default 10M): RSS vs transaction size.
#  (d) backfill: N existing rows (older than the slot) copied by `cutover backfill` into the topic
#      (rows/s until Kafka acknowledged the last chunk) and on into the mirror target (end to
#      end), next to `COPY … TO STDOUT | COPY … FROM STDIN` of the same table.
#  (e) BENCH_TABLES tables (default 500) in one publication (TABLES IN SCHEMA): N 1-row
#      transactions spread over them, end to end, and the time to the first applied row.
#  (f) first run only: catch-up time for backlogs of BENCH_SCALE_ROWS (default "100000 1000000").
#  Peers: native logical replication (CREATE SUBSCRIPTION) in (a), and Debezium 3.6 (PostgreSQL
#  connector + JDBC sink on Kafka Connect standalone, deploy/bench/debezium.sh; BENCH_PEERS=0
#  skips it). CPU seconds (utime + stime from /proc) of each process beside native's walsender +
#  apply worker. A run of 3 or more (the default) publishes docs/bench/latest.* and the plots.
# Needs `make up` and a release build (the Makefile target does both).
source "$(dirname "${BASH_SOURCE[0]}")/../local/lib.sh"
source "$ROOT/deploy/bench/clusters.sh"
cd "$ROOT"
BIN="${CUTOVER_BIN:-$ROOT/target/release/cutover}"
# A debug build is 5-10x slower per row: measuring one by mistake (lib.sh once set CUTOVER_BIN to
# the stack's debug build, and every bench from 2026-12-02 ran it) makes every ratio meaningless.
case "$(readlink -f "$BIN")" in
  */target/debug/*) [ "${BENCH_ALLOW_DEBUG:-0}" = 1 ] || die "refusing to benchmark a debug build: $BIN (BENCH_ALLOW_DEBUG=1 to insist)";;
esac
BIN_ID="$(readlink -f "$BIN") ($(sha256sum "$BIN" | cut -c1-12), built $(date -u -r "$BIN" +%FT%TZ))"
N="${BENCH_ROWS:-200000}"
RATES="${BENCH_RATES:-2000 20000}" # steady-state rates, rows/s
SECS="${BENCH_SECS:-60}"
RSS_ROWS="${BENCH_RSS_ROWS:-1000000}"
RSS_BIG_ROWS="${BENCH_RSS_BIG_ROWS:-10000000}" # first run only: RSS vs transaction size
SCALE_ROWS="${BENCH_SCALE_ROWS:-100000 1000000}" # first run only: catch-up time vs backlog
TABLES="${BENCH_TABLES:-500}"
OUT="$STATE/bench"
RUN="b$(date +%s)"
mkdir -p "$OUT"
count() { T "$1" -tAc "SELECT count(*) FROM bench.t" 2>/dev/null || echo 0; }
wait_count() { # wait_count DB N TIMEOUT_S [PID]: until DB's bench.t has N rows
  local db=$1 want=$2 limit=$3 pid=${4:-} t0; t0=$(now)
  while [ "$(count "$db")" -lt "$want" ]; do
    if awk "BEGIN {exit !($(now) - $t0 > $limit)}"; then die "timed out waiting for $want rows in $db"; fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then die "cutover exited early, see $OUT/$RUN.log"; fi
    sleep 0.2
  done
}
elapsed() { awk "BEGIN {printf \"%.2f\", $2 - $1}"; }
rate() { awk "BEGIN {printf \"%.0f\", $1 / $2}"; }
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

TABLE_DDL="CREATE SCHEMA IF NOT EXISTS bench; CREATE TABLE IF NOT EXISTS bench.t (id bigint PRIMARY KEY, qty int, price numeric(10,2), note text, created_at timestamptz DEFAULT clock_timestamp())"
PEERS="${BENCH_PEERS:-1}" # 0: skip the Debezium peer
# bench-only Python packages (the plots), into the test venv; `make test` never needs them
"$VENV/bin/python" -c "import matplotlib" 2>/dev/null || "$VENV/bin/pip" install -q --disable-pip-version-check "matplotlib==3.10.9"
[ "$PEERS" = 0 ] || bash "$ROOT/deploy/bench/debezium.sh" setup
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat" 2>/dev/null || echo 0; }
for db in bench_target bench_apply bench_native bench_dbz; do
  T postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 || T postgres -c "CREATE DATABASE $db"
done
L <<'SQL'
CREATE SCHEMA IF NOT EXISTS bench;
CREATE OR REPLACE PROCEDURE bench.gen(n bigint, per_txn int) LANGUAGE plpgsql AS $$
DECLARE i bigint := 0;
BEGIN
  WHILE i < n LOOP
    INSERT INTO bench.t (id, qty, price, note)
    SELECT i + g, g % 100, (g % 1000) / 10.0, 'order line ' || (i + g) || ' — straße ✓'
    FROM generate_series(1, least(per_txn, n - i)) g;
    COMMIT;
    i := i + per_txn;
  END LOOP;
END $$;
CREATE OR REPLACE PROCEDURE bench.gen_many(n bigint, tables int) LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..n LOOP
    EXECUTE format('INSERT INTO benchm.t%s (id, qty, price, note) VALUES ($1, $2, $3, $4)', i % tables)
      USING i, (i % 100)::int, (i % 1000) / 10.0, 'order line ' || i || ' — straße ✓';
    COMMIT;
  END LOOP;
END $$;
CREATE OR REPLACE PROCEDURE bench.steady(rate int, secs int) LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp(); tick int := 0; per int := greatest(rate / 100, 1); id bigint := 0;
BEGIN
  WHILE clock_timestamp() < t0 + make_interval(secs => secs) LOOP
    INSERT INTO bench.t (id, qty, price, note)
    SELECT id + g, 1, 1.00, 'steady' FROM generate_series(1, per) g;
    id := id + per;
    COMMIT;
    tick := tick + 1;
    PERFORM pg_sleep(greatest(0, extract(epoch FROM (t0 + tick * interval '10 ms' - clock_timestamp()))));
  END LOOP;
END $$;
SQL

reset_tables() {
  L -c "DROP TABLE IF EXISTS bench.t" -c "$TABLE_DDL" 2>/dev/null
  for db in bench_target bench_apply bench_native bench_dbz; do
    T "$db" -c "DROP SCHEMA IF EXISTS bench CASCADE" -c "$TABLE_DDL" 2>/dev/null
  done
  # the target-only column the steady-state latency is read from
  T bench_target -c "ALTER TABLE bench.t ADD COLUMN applied_at timestamptz DEFAULT clock_timestamp()"
}

write_config() { # write_config ID FILE
  cat >"$2" <<EOF
name = "bench"
topic_prefix = "$1"
[source]
url = "postgres://postgres@127.0.0.1:$LEGACY_PORT/app"
slot = "$1"
publication = "$1"
schemas = []
tables = ["bench.t"]
status_interval_secs = 1
heartbeat_interval_secs = 1
[kafka]
brokers = ["127.0.0.1:$KAFKA_PORT"]
partitions = 3
[registry]
url = "http://127.0.0.1:$REGISTRY_PORT"
[observe]
listen = "127.0.0.1:9465"
log_format = "text"
log_level = "warn"
[[sinks]]
name = "mirror"
url = "postgres://postgres@127.0.0.1:$NEW_PORT/bench_target"
create_tables = false
[[sinks]]
name = "applyonly"
url = "postgres://postgres@127.0.0.1:$NEW_PORT/bench_apply"
create_tables = false
EOF
}

make_slot() { # make_slot NAME: publication + pgoutput slot before the workload
  L -c "CREATE PUBLICATION $1 FOR TABLE bench.t" -c "SELECT pg_create_logical_replication_slot('$1', 'pgoutput')" >/dev/null
}
drop_slot() {
  # The walsender of a just-stopped capture may hold the slot for a moment: retry.
  for _ in $(seq 1 20); do
    [ -z "$(L -tAc "SELECT 1 FROM pg_replication_slots WHERE slot_name = '$1'")" ] && break
    L -c "SELECT pg_drop_replication_slot('$1')" >/dev/null 2>&1 && break
    sleep 0.5
  done
  L -c "DROP PUBLICATION IF EXISTS $1" >/dev/null 2>&1 || true
}

start_bg() { "$@" >>"$OUT/$RUN.log" 2>&1 & pids+=($!); echo $!; }
# start_bg runs in a $(...) subshell, so its process is not this shell's child and `wait`
# cannot wait for it: poll until it is gone (bounded), or the next stage finds its port taken.
stop_bg() {
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}


# One run: every stage once, into R.
measure() {
for P in 1 100; do
  id="${RUN}_p$P"
  log "catch-up: $N rows as $P-row transactions"
  reset_tables
  write_config "${id//_/-}" "$OUT/$id.toml"
  sed -i "s/^slot = .*/slot = \"$id\"/; s/^publication = .*/publication = \"$id\"/" "$OUT/$id.toml"
  make_slot "$id"; make_slot "${id}_nat"; make_slot "${id}_cap"
  [ "$PEERS" = 0 ] || make_slot "${id}_dbz"
  t0=$(now); L -c "CALL bench.gen($N, $P)"; R[gen_s_$P]=$(elapsed "$t0" "$(now)")
  end_lsn=$(L -tAc "SELECT pg_current_wal_lsn()")

  # native logical replication
  t0=$(now)
  T bench_native -c "CREATE SUBSCRIPTION ${id}_nat CONNECTION 'host=127.0.0.1 port=$LEGACY_PORT dbname=app user=postgres' PUBLICATION ${id}_nat WITH (create_slot = false, slot_name = '${id}_nat', copy_data = false)" >/dev/null
  wait_count bench_native "$N" 600
  R[native_s_$P]=$(elapsed "$t0" "$(now)")
  # CPU of native's two processes: the walsender (the slot's active pid) and the apply worker
  R[native_cpu_$P]=$(awk "BEGIN {print $(cpu_s "$(L -tAc "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '${id}_nat'")") + $(cpu_s "$(T bench_native -tAc "SELECT pid FROM pg_stat_subscription WHERE subname = '${id}_nat' AND pid IS NOT NULL LIMIT 1")")}")
  T bench_native -c "DROP SUBSCRIPTION ${id}_nat" >/dev/null

  # cutover: capture + mirror sink, end to end
  t0=$(now); pid=$(start_bg "$BIN" run --sink mirror --config "$OUT/$id.toml")
  wait_count bench_target "$N" 900 "$pid"
  R[cutover_s_$P]=$(elapsed "$t0" "$(now)")
  R[cutover_cpu_$P]=$(cpu_s "$pid")
  bytes=$(curl -fsS http://127.0.0.1:9465/metrics | awk '/^cutover_capture_bytes_total/ {s += $NF} END {print s + 0}')
  stop_bg "$pid"
  R[avg_value_bytes]=$(awk "BEGIN {printf \"%.0f\", $bytes / $N}")

  # apply-only: a second sink reads the now-filled topic
  t0=$(now); pid=$(start_bg "$BIN" apply --sink applyonly --config "$OUT/$id.toml")
  wait_count bench_apply "$N" 900 "$pid"
  R[apply_s_$P]=$(elapsed "$t0" "$(now)")
  R[apply_cpu_$P]=$(cpu_s "$pid")
  stop_bg "$pid"

  # capture-only: its own slot and topics, done when the slot is confirmed past the workload
  cap="${id}_cap"
  write_config "${cap//_/-}" "$OUT/$cap.toml"
  sed -i "s/^slot = .*/slot = \"$cap\"/; s/^publication = .*/publication = \"$cap\"/" "$OUT/$cap.toml"
  t0=$(now); pid=$(start_bg "$BIN" capture --config "$OUT/$cap.toml")
  until [ "$(L -tAc "SELECT confirmed_flush_lsn >= '$end_lsn'::pg_lsn FROM pg_replication_slots WHERE slot_name = '$cap'")" = t ]; do sleep 0.2; done
  R[capture_s_$P]=$(elapsed "$t0" "$(now)")
  R[capture_cpu_$P]=$(cpu_s "$pid")
  stop_bg "$pid"
  if [ "$PEERS" != 0 ]; then
    log "Debezium peer: the same $N rows, PostgreSQL connector + JDBC sink on Kafka Connect standalone"
    read -r R[dbz_s_$P] R[dbz_cpu_$P] < <(bash "$ROOT/deploy/bench/debezium.sh" catchup "${id//_/-}-dbz" "${id}_dbz" "${id}_dbz" bench_dbz "$N")
    drop_slot "${id}_dbz"
  fi
  drop_slot "$id"; drop_slot "${id}_nat"; drop_slot "$cap"
done

log "broker ceiling: $N messages of ${R[avg_value_bytes]} bytes, Python confluent-kafka"
read -r produce consume < <("$VENV/bin/python" - "$N" "${R[avg_value_bytes]}" "127.0.0.1:$KAFKA_PORT" <<'PY'
import sys, time
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
n, size, bs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t = f"bench-ceiling-{time.time()}"
admin = AdminClient({"bootstrap.servers": bs})
for f in admin.create_topics([NewTopic(t, 3, 1)]).values(): f.result()
p = Producer({"bootstrap.servers": bs, "linger.ms": 5, "enable.idempotence": True, "acks": "all", "compression.type": "lz4"})
v = b"x" * size
t0 = time.time()
for i in range(n):
    while True:
        try: p.produce(t, key=str(i).encode(), value=v); break
        except BufferError: p.poll(0.05)
p.flush(); prod = n / (time.time() - t0)
c = Consumer({"bootstrap.servers": bs, "group.id": t, "auto.offset.reset": "earliest"})
c.subscribe([t]); got = 0; t0 = time.time()
while got < n and time.time() - t0 < 300:
    got += sum(1 for m in c.consume(1000, 0.5) if not m.error())
cons = got / (time.time() - t0); c.close()
print(f"{prod:.0f} {cons:.0f}")
PY
)
R[broker_produce]=$produce; R[broker_consume]=$consume

# Kafka's own tools (kafka-tools jars of the local stack): the broker's ceiling without a
# Python client in the way. Same record size, same producer guarantees as cutover's producer.
NC="${BENCH_CEILING_MESSAGES:-1000000}"
log "broker ceiling: $NC records of ${R[avg_value_bytes]} bytes, Kafka ProducerPerformance / ConsumerPerformance"
KCP="$KAFKA_HOME/libs/*"
kt="bench-ceiling-java-$RUN"
java -cp "$KCP" org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
  --create --topic "$kt" --partitions 3 --replication-factor 1 >/dev/null
R[kafka_produce]=$(java -cp "$KCP" org.apache.kafka.tools.ProducerPerformance --topic "$kt" \
  --num-records "$NC" --record-size "${R[avg_value_bytes]}" --throughput -1 \
  --producer-props "bootstrap.servers=127.0.0.1:$KAFKA_PORT" acks=all linger.ms=5 \
  compression.type=lz4 enable.idempotence=true 2>/dev/null \
  | awk '/records sent/ {v=$4} END {printf "%.0f", v}')
# fetch.nMsg.sec: consume rate excluding the group join.
R[kafka_consume]=$(java -cp "$KCP" org.apache.kafka.tools.ConsumerPerformance \
  --bootstrap-server "127.0.0.1:$KAFKA_PORT" --topic "$kt" --messages "$NC" 2>/dev/null \
  | awk -F', *' 'NF >= 10 && $1 !~ /start/ {v=$10} END {printf "%.0f", v}')
drop_topics "$kt"

for rate in $RATES; do
log "steady state: $rate rows/s for $SECS s"
id="${RUN}_steady$rate"
reset_tables
write_config "${id//_/-}" "$OUT/$id.toml"
sed -i "s/^slot = .*/slot = \"$id\"/; s/^publication = .*/publication = \"$id\"/" "$OUT/$id.toml"
pid=$(start_bg "$BIN" run --sink mirror --config "$OUT/$id.toml")
until [ "$(L -tAc "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$id' AND active")" = 1 ]; do sleep 0.2; done
# Warm-up outside the measured rows (negative ids): the sink has joined its group, holds its
# partitions and has applied a first batch before the first measured commit, so the figures
# are the steady state's, not a start's (a start is the catch-up stages' business).
L -c "INSERT INTO bench.t (id, qty, price, note) SELECT -g, 0, 0, 'warm-up' FROM generate_series(1, 10) g"
wait_count bench_target 10 120 "$pid"
L -c "CALL bench.steady($rate, $SECS)"
want=$(L -tAc "SELECT count(*) FROM bench.t")
wait_count bench_target "$want" 300 "$pid"
stop_bg "$pid"
read -r p50 p95 p99 < <(T bench_target -tAc "SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1), round(percentile_cont(0.95) WITHIN GROUP (ORDER BY ms)::numeric, 1), round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1) FROM (SELECT extract(epoch FROM applied_at - created_at) * 1000 AS ms FROM bench.t WHERE id > 0) x" | tr '|' ' ')
R[steady_rows_$rate]=$want; R[p50_ms_$rate]=$p50; R[p95_ms_$rate]=$p95; R[p99_ms_$rate]=$p99
# the committed rate the procedure actually reached (it cannot catch up a tick it missed)
R[steady_rate_$rate]=$(T bench_target -tAc "SELECT round(count(*) / extract(epoch FROM max(created_at) - min(created_at))) FROM bench.t WHERE id > 0")
# per-row (commit time, latency) of this run's steady stages, for deploy/bench/plot.py
T bench_target -c "\\copy (SELECT extract(epoch FROM created_at), extract(epoch FROM applied_at), extract(epoch FROM applied_at - created_at) * 1000 FROM bench.t WHERE id > 0 ORDER BY created_at) TO '$OUT/steady-$rate.csv' WITH (FORMAT csv)"
drop_slot "$id"
done

log "backfill: $N existing rows, and COPY for comparison"
id="${RUN}_bf"
reset_tables
L -c "INSERT INTO bench.t (id, qty, price, note) SELECT g, g % 7, 1.00 + g % 100, 'existing ' || g FROM generate_series(1, $N) g" -c "ANALYZE bench.t"
t0=$(now)
"$PGBIN/psql" -X -q -h 127.0.0.1 -p "$LEGACY_PORT" -U postgres -d app -c "\\copy (SELECT * FROM bench.t) TO STDOUT" \
  | T bench_native -c "\\copy bench.t FROM STDIN"
R[copy_s]=$(elapsed "$t0" "$(now)")
write_config "${id//_/-}" "$OUT/$id.toml"
sed -i "s/^slot = .*/slot = \"$id\"/; s/^publication = .*/publication = \"$id\"/; 1s/^name = .*/name = \"$id\"/" "$OUT/$id.toml"
pid=$(start_bg "$BIN" run --sink mirror --config "$OUT/$id.toml")
until [ "$(L -tAc "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$id' AND active")" = 1 ]; do
  kill -0 "$pid" 2>/dev/null || die "cutover run exited (see $OUT/$RUN.log)"; sleep 0.2
done
t0=$(now)
"$BIN" backfill --table bench.t --chunk-rows 5000 --config "$OUT/$id.toml" >>"$OUT/$RUN.log" 2>&1
R[backfill_topic_s]=$(elapsed "$t0" "$(now)")
wait_count bench_target "$N" 600 "$pid"
R[backfill_target_s]=$(elapsed "$t0" "$(now)")
stop_bg "$pid"
L -c "DELETE FROM cutover.backfill WHERE pipeline = '$id'" >/dev/null 2>&1 || true
drop_slot "$id"
# This stage's pipeline name is per run: drop its sink's replication origin, or every run
# would keep one of the new store's max_replication_slots origin states for good.
T bench_target -c "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname LIKE 'cutover:${id}:%'" >/dev/null 2>&1 || true

log "$TABLES tables in the publication: $N rows as 1-row transactions spread over them"
id="${RUN}_tables"
many_ddl() { # many_ddl EXTRA_COLUMN: the benchm schema of TABLES tables shaped like bench.t
  echo "DROP SCHEMA IF EXISTS benchm CASCADE; CREATE SCHEMA benchm;"
  for i in $(seq 0 $((TABLES - 1))); do
    echo "CREATE TABLE benchm.t$i (id bigint PRIMARY KEY, qty int, price numeric(10,2), note text, created_at timestamptz DEFAULT clock_timestamp()$1);"
  done
}
many_ddl "" | L >/dev/null
many_ddl ", applied_at timestamptz DEFAULT clock_timestamp()" | T bench_target >/dev/null
T bench_target -c "CREATE VIEW benchm.all_rows AS $(for i in $(seq 0 $((TABLES - 1))); do [ "$i" = 0 ] || printf ' UNION ALL '; printf 'SELECT applied_at FROM benchm.t%s' "$i"; done)"
L -c "CREATE PUBLICATION $id FOR TABLES IN SCHEMA benchm" -c "SELECT pg_create_logical_replication_slot('$id', 'pgoutput')" >/dev/null
L -c "CALL bench.gen_many($N, $TABLES)"
tables_end=$(L -tAc "SELECT pg_current_wal_lsn()")
write_config "${id//_/-}" "$OUT/$id.toml"
sed -i "s/^slot = .*/slot = \"$id\"/; s/^publication = .*/publication = \"$id\"/; s/^schemas = .*/schemas = [\"benchm\"]/; s/^tables = .*/tables = []/" "$OUT/$id.toml"
t0=$(now); pid=$(start_bg "$BIN" run --sink mirror --config "$OUT/$id.toml")
# A row that never arrives is reported as lost (and the stage moves on), not waited for:
# once the slot is confirmed past the workload and the count has not moved for 60 s.
lost=0; last=-1; still=$(now)
while :; do
  got=$(T bench_target -tAc "SELECT count(*) FROM benchm.all_rows" 2>/dev/null || echo 0)
  [ "$got" -ge "$N" ] && break
  kill -0 "$pid" 2>/dev/null || die "cutover exited early, see $OUT/$RUN.log"
  awk "BEGIN {exit !($(now) - $t0 > 900)}" && die "timed out waiting for $N rows over $TABLES tables"
  [ "$got" != "$last" ] && { last=$got; still=$(now); }
  if awk "BEGIN {exit !($(now) - $still > 60)}" \
    && [ "$(L -tAc "SELECT confirmed_flush_lsn >= '$tables_end'::pg_lsn FROM pg_replication_slots WHERE slot_name = '$id'")" = t ]; then
    lost=$((N - got))
    log "LOST: $lost of $N rows never reached the target (slot confirmed past the workload); per-table counts in $OUT/$id.lost.txt"
    for i in $(seq 0 $((TABLES - 1))); do echo "SELECT 't$i', (SELECT count(*) FROM benchm.t$i) UNION ALL"; done | sed '$ s/UNION ALL$//' \
      | T bench_target -tA -F ' ' | awk -v per=$((N / TABLES)) '$2 != per' >"$OUT/$id.lost.txt"
    break
  fi
  sleep 0.5
done
R[tables_lost]=$lost
[ "$lost" = 0 ] && R[tables_s]=$(elapsed "$t0" "$(now)")
R[tables_first_s]=$(T bench_target -tAc "SELECT round((extract(epoch FROM min(applied_at)) - $t0)::numeric, 2) FROM benchm.all_rows")
stop_bg "$pid"
drop_slot "$id"
T bench_target -c "DROP SCHEMA benchm CASCADE" >/dev/null; L -c "DROP SCHEMA benchm CASCADE" >/dev/null
drop_topics "${id//_/-}\..*"

if [ "$FIRST" = 1 ]; then
  # How cost grows with work, once per bench (the figures are times, not ratios to a peer run
  # beside them): catch-up time for backlogs of SCALE_ROWS (1-row txns, cutover end to end).
  for n in $SCALE_ROWS; do
    log "scaling: catch-up of a $n-row backlog"
    id="${RUN}_scale$n"
    reset_tables
    write_config "${id//_/-}" "$OUT/$id.toml"
    sed -i "s/^slot = .*/slot = \"$id\"/; s/^publication = .*/publication = \"$id\"/" "$OUT/$id.toml"
    make_slot "$id"
    L -c "CALL bench.gen($n, 1)"
    t0=$(now); pid=$(start_bg "$BIN" run --sink mirror --config "$OUT/$id.toml")
    wait_count bench_target "$n" 1800 "$pid"
    R[scale_s_$n]=$(elapsed "$t0" "$(now)")
    stop_bg "$pid"
    drop_slot "$id"
  done
  for n in $RSS_BIG_ROWS; do
    log "peak RSS through a $n-row transaction"
    rss_line=$(CUTOVER_BIN="$BIN" bash "$ROOT/deploy/bench/capture_1m.sh" "$n" | tail -1)
    R[rss_mib_$n]=$(sed -n 's/.*peak_rss=\([0-9.]*\) MiB.*/\1/p' <<<"$rss_line")
  done
fi

drop_topics "${RUN}[-_.].*"

log "peak RSS through a $RSS_ROWS-row transaction"
rss_line=$(CUTOVER_BIN="$BIN" bash "$ROOT/deploy/bench/capture_1m.sh" "$RSS_ROWS" | tail -1)
R[rss_mib]=$(sed -n 's/.*peak_rss=\([0-9.]*\) MiB.*/\1/p' <<<"$rss_line")
R[rss_events_s]=$(sed -n 's/.*throughput=\([0-9,]*\) events.*/\1/p' <<<"$rss_line" | tr -d ,)
drop_topics 'bench-[0-9]+\..*' # capture_1m.sh's (a 10M-row one holds ~1 GB)
}

RUNS="${BENCH_RUNS:-3}"
rm -f "$OUT"/run-*.json "$OUT"/steady-*.csv
for k in $(seq 1 "$RUNS"); do
  FIRST=$([ "$k" = 1 ] && echo 1 || echo 0)
  RUN="b$(date +%s)"
  log "run $k of $RUNS ($RUN)"
  unset R; declare -gA R
  measure
  "$VENV/bin/python" - "$OUT/run-$k.json" <<PY
import json, sys
r = {$(for key in "${!R[@]}"; do printf '"%s": "%s", ' "$key" "${R[$key]}"; done)}
json.dump({k: float(v) for k, v in r.items()}, open(sys.argv[1], "w"), indent=1, sort_keys=True)
PY
done

machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
"$VENV/bin/python" "$ROOT/deploy/bench/report.py" --rows "$N" --rates "$RATES" --secs "$SECS" \
  --tables "$TABLES" --scale-rows "$SCALE_ROWS" --rss-big-rows "$RSS_BIG_ROWS" \
  --rss-rows "$RSS_ROWS" --machine "$machine" --binary "$BIN_ID" \
  --txt "$OUT/results.txt" --json "$OUT/results.json" "$OUT"/run-*.json
"$VENV/bin/python" "$ROOT/deploy/bench/plot.py" "$OUT" "$OUT"/steady-*.csv
# A full bench (3 runs or more) publishes itself: docs/bench/latest.{txt,json} and the plots.
# BENCH_PUBLISH=0 keeps a full run local; BENCH_PUBLISH=1 publishes a shorter one.
if [ "${BENCH_PUBLISH:-$([ "$RUNS" -ge 3 ] && echo 1 || echo 0)}" = 1 ]; then
  cp "$OUT/results.txt" "$ROOT/docs/bench/latest.txt"
  cp "$OUT/results.json" "$ROOT/docs/bench/latest.json"
  cp "$OUT"/steady-*.png "$ROOT/docs/bench/"
  log "published to docs/bench/"
fi
