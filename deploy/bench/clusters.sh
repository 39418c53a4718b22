# The bench scripts' handles on the local stack, sourced after deploy/local/lib.sh (ports,
# KAFKA_HOME, pg_bindir): psql on each cluster, a clock, topic deletion, and the config head
# of a pipeline that captures one schema of its own.
PGBIN="$(pg_bindir)"
export PGOPTIONS="-c client_min_messages=warning" # psql: no NOTICE per dropped slot or table
L() { "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$LEGACY_PORT" -U postgres -d app -v ON_ERROR_STOP=1 "$@"; }
T() { local db=$1; shift; "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$NEW_PORT" -U postgres -d "$db" -v ON_ERROR_STOP=1 "$@"; }
now() { date +%s.%N; }

# Delete topics by regex (TopicCommand accepts one for --delete): every bench run and probe
# makes its own topics, and 500 tables x 3 partitions per run would otherwise pile up until
# the broker runs out of file descriptors (it did, in the second run of a full bench).
drop_topics() { # drop_topics REGEX
  java -cp "$KAFKA_HOME/libs/*" org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
    --delete --topic "$1" >/dev/null 2>&1 || true
}

# The config of pipeline ID capturing schema ID into topics ID.* with PARTS partitions; a
# caller appends its [kafka.properties] or [[sinks]] tables.
schema_pipeline_config() { # schema_pipeline_config FILE ID PARTS LOG_LEVEL
  cat >"$1" <<CFG
name = "$2"
topic_prefix = "$2"
[source]
url = "postgres://postgres@127.0.0.1:$LEGACY_PORT/app"
slot = "$2"
publication = "$2"
schemas = ["$2"]
status_interval_secs = 1
[kafka]
brokers = ["127.0.0.1:$KAFKA_PORT"]
partitions = $3
[registry]
url = "http://127.0.0.1:$REGISTRY_PORT"
[observe]
listen = ""
log_level = "$4"
CFG
}
