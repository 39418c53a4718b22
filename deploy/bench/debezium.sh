#!/usr/bin/env bash
# make bench's Debezium peer: Debezium's PostgreSQL connector (source) and its JDBC sink on one
# Kafka Connect standalone worker, against the same broker and the same PostgreSQL clusters as
# cutover. Only for side-by-side measurement; nothing of cutover depends on it.
#
#   debezium.sh setup                       resolve both plugins from Maven Central (once: the
#                                           folders are cached under ~/.m2/cutover-debezium/)
#   debezium.sh catchup ID SLOT PUB DB N    stream the slot's backlog of bench.t into DB's bench.t
#                                           until it holds N rows; prints "SECONDS CPU_SECONDS"
#
# Connect itself comes from the local Kafka's own jars (connect-runtime is in its lib folder).
# Converters: JsonConverter with schemas (the JDBC sink needs schemas; Confluent's Avro converter
# is not on Maven Central). Tuned the way Debezium's docs suggest for throughput: bigger source
# batches and queue, 4096-record sink batches, upsert, one task per connector (a table of one
# topic gives the sink no more parallelism than cutover's sink has).
source "$(dirname "${BASH_SOURCE[0]}")/../local/lib.sh"
HERE="$ROOT/deploy/bench/debezium"
stamp="$(cat "$HERE"/pom-*.xml | sha256sum | cut -c1-16)"
PLUGINS="$HOME/.m2/cutover-debezium/$stamp"

setup() {
  [ -f "$PLUGINS/.done" ] && return 0
  log "resolving Debezium's PostgreSQL connector and JDBC sink from Maven Central into $PLUGINS"
  rm -rf "$PLUGINS.tmp"
  for p in postgres jdbc; do
    # org.apache.kafka and Jackson come from the worker's own class path, never from a plugin
    # folder: a second jackson-databind in the sink's folder makes Hibernate's ServiceLoader
    # fail on the worker's BlackbirdModule ("not a subtype") and the sink task never starts
    mvn -B -q -f "$HERE/pom-$p.xml" org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
      -DincludeScope=runtime -DexcludeGroupIds=org.apache.kafka,com.fasterxml.jackson.core,com.fasterxml.jackson.datatype -DoutputDirectory="$PLUGINS.tmp/$p" >/dev/null \
      || die "could not resolve Debezium $p from Maven Central (mvn -f $HERE/pom-$p.xml dependency:tree)"
  done
  rm -rf "$PLUGINS" && mv "$PLUGINS.tmp" "$PLUGINS" && touch "$PLUGINS/.done"
}

cpu_seconds() { # utime + stime of a live process, in seconds
  awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat" 2>/dev/null || echo 0
}

catchup() {
  local id=$1 slot=$2 pub=$3 db=$4 n=$5 dir
  setup
  dir="$STATE/bench/dbz-$id"
  rm -rf "$dir" && mkdir -p "$dir"
  cat >"$dir/worker.properties" <<EOF
bootstrap.servers=127.0.0.1:$KAFKA_PORT
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=true
value.converter.schemas.enable=true
offset.storage.file.filename=$dir/offsets
offset.flush.interval.ms=1000
plugin.path=$PLUGINS
listeners=http://127.0.0.1:${DBZ_REST_PORT:-18083}
producer.linger.ms=5
producer.batch.size=262144
producer.compression.type=lz4
consumer.max.poll.records=4096
consumer.fetch.min.bytes=65536
EOF
  cat >"$dir/source.properties" <<EOF
name=$id-source
connector.class=io.debezium.connector.postgresql.PostgresConnector
tasks.max=1
database.hostname=127.0.0.1
database.port=$LEGACY_PORT
database.user=postgres
database.password=
database.dbname=app
topic.prefix=$id
plugin.name=pgoutput
slot.name=$slot
publication.name=$pub
publication.autocreate.mode=disabled
table.include.list=bench.t
snapshot.mode=no_data
max.batch.size=8192
max.queue.size=32768
topic.creation.default.partitions=3
topic.creation.default.replication.factor=1
EOF
  cat >"$dir/sink.properties" <<EOF
name=$id-sink
connector.class=io.debezium.connector.jdbc.JdbcSinkConnector
tasks.max=1
topics=$id.bench.t
connection.url=jdbc:postgresql://127.0.0.1:$NEW_PORT/$db
connection.username=postgres
connection.password=
insert.mode=upsert
primary.key.mode=record_key
delete.enabled=true
schema.evolution=none
collection.name.format=bench.\${source.table}
batch.size=4096
EOF
  cat >"$dir/log4j2.properties" <<'EOF'
rootLogger.level=WARN
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
EOF
  local t0 pid cpu=0 got
  t0=$(date +%s.%N)
  java -Xms512m -Xmx2g -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -cp "$KAFKA_HOME/libs/*" org.apache.kafka.connect.cli.ConnectStandalone \
    "$dir/worker.properties" "$dir/source.properties" "$dir/sink.properties" >"$dir/connect.log" 2>&1 &
  pid=$!
  while :; do
    got=$("$(pg_bindir)/psql" -X -q -h 127.0.0.1 -p "$NEW_PORT" -U postgres -d "$db" -tAc "SELECT count(*) FROM bench.t" 2>/dev/null || echo 0)
    [ "$got" -ge "$n" ] && break
    kill -0 "$pid" 2>/dev/null || { tail -30 "$dir/connect.log" >&2; die "Kafka Connect exited early (see $dir/connect.log)"; }
    # a failed task never recovers on its own: stop at once instead of waiting out the timeout
    if grep -qE "Task is being killed and will not recover|Failed to start connector|Failed to create job" "$dir/connect.log"; then
      kill "$pid" 2>/dev/null; grep -m3 -E "ERROR" "$dir/connect.log" >&2; die "a Debezium task failed at $got of $n rows (see $dir/connect.log)"
    fi
    awk "BEGIN {exit !($(date +%s.%N) - $t0 > ${DBZ_TIMEOUT_S:-600})}" && { kill "$pid"; die "Debezium timed out at $got of $n rows (see $dir/connect.log)"; }
    sleep 0.5
  done
  cpu=$(cpu_seconds "$pid")
  local secs; secs=$(awk "BEGIN {printf \"%.2f\", $(date +%s.%N) - $t0}")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  echo "$secs $cpu"
}

case "${1:-}" in
  setup) setup ;;
  catchup) shift; catchup "$@" ;;
  *) die "usage: debezium.sh setup | catchup ID SLOT PUB DB N" ;;
esac
