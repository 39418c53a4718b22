#!/usr/bin/env bash
# Run one single-node KRaft Kafka (broker + controller) in the foreground:
#   run.sh DATA_DIR PORT CONTROLLER_PORT
# Optional: CUTOVER_KAFKA_EXTRA_PROPERTIES=FILE is appended to the rendered server.properties
# (a later key wins: the tests' secure brokers add SASL_SSL and SSL listeners this way), and
# CUTOVER_KAFKA_FORMAT_ARGS are extra arguments to the one-time storage format (e.g.
# --add-scram 'SCRAM-SHA-512=[name=u,password=p]', SCRAM credentials of a KRaft cluster).
# Renders server.properties.in into DATA_DIR, formats DATA_DIR once (the cluster id is kept in
# DATA_DIR/cluster.id, with the data), then execs the JVM, so the caller's pid IS the broker
# (SIGTERM = clean shutdown, SIGKILL = crash). Used by stack.sh and by the tests' private brokers.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

dir=${1:?data dir}; port=${2:?port}; cport=${3:?controller port}
here="$ROOT/deploy/local/kafka"
[ -f "$KAFKA_HOME/libs/kafka_2.13-$KAFKA_VERSION.jar" ] || die "Kafka $KAFKA_VERSION jars not found in $KAFKA_HOME/libs (run deploy/local/bootstrap.sh)"
mkdir -p "$dir/data"
dir="$(cd "$dir" && pwd)"
sed -e "s#@PORT@#$port#g; s#@CONTROLLER_PORT@#$cport#g; s#@DATA_DIR@#$dir/data#g" \
  "$here/server.properties.in" > "$dir/server.properties"
if [ -n "${CUTOVER_KAFKA_EXTRA_PROPERTIES:-}" ]; then
  cat "$CUTOVER_KAFKA_EXTRA_PROPERTIES" >> "$dir/server.properties"
fi

CP="$KAFKA_HOME/libs/*"
if [ ! -f "$dir/data/meta.properties" ]; then
  [ -f "$dir/cluster.id" ] || java -cp "$CP" kafka.tools.StorageTool random-uuid > "$dir/cluster.id"
  # shellcheck disable=SC2086 # the extra format arguments are meant to split
  eval "extra_format=(${CUTOVER_KAFKA_FORMAT_ARGS:-})"
  java -cp "$CP" kafka.tools.StorageTool format -t "$(cat "$dir/cluster.id")" -c "$dir/server.properties" "${extra_format[@]}" >/dev/null \
    || die "could not format $dir/data"
fi
# 1 GiB heap is plenty on one node; the rest of memory serves as page cache for the log.
exec java -Xms256m -Xmx${CUTOVER_KAFKA_HEAP:-1g} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
  -Djava.awt.headless=true -Dkafka.logs.dir="$dir" -Dlog4j2.configurationFile="$here/log4j2.xml" \
  -cp "$CP" kafka.Kafka "$dir/server.properties"
