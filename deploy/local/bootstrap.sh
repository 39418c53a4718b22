#!/usr/bin/env bash
# Install what the local stack and the tests need and a fresh machine may lack. Idempotent:
# every step checks first and does nothing when already satisfied.
#   - Debian packages: PostgreSQL 15 server, C libraries for rdkafka (SSL, SASL), Python venv,
#     Prometheus (promtool for the alert-rule tests, the server for the live alerting test),
#     and a JRE >= 17 + Maven when the machine has none
#   - Apache Kafka's jars, resolved from Maven Central by deploy/local/kafka/pom.xml into
#     ~/.m2/cutover-kafka/<version>/libs (once; a warm run only checks a stamp file)
#   - cargo-nextest (cargo install, cached in ~/.cargo/bin)
#   - a Python venv with the stock confluent-kafka client (used by tests as a reference client)
#
# Usage: bootstrap.sh [all|stack|nextest]   (default all; `make up` asks for `stack` only, so a
# cold `make up` does not wait for cargo-nextest; `make test-only` asks for `nextest`)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
what="${1:-all}"
case "$what" in all|stack|nextest) ;; *) die "usage: bootstrap.sh [all|stack|nextest]" ;; esac

APT_PACKAGES=(libssl-dev libsasl2-dev pkg-config python3-venv curl postgresql-15 postgresql-client-15 prometheus)
PY_PACKAGES=("confluent-kafka[avro]==2.12.1")
NEXTEST_VERSION="0.9.151"

java_major() { java -version 2>&1 | sed -nE 's/.*version "([0-9]+).*/\1/p' | head -n1; }

if [ "$what" != nextest ]; then
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v java >/dev/null || [ "$(java_major)" -lt 17 ]; then missing+=(openjdk-17-jre-headless); fi
command -v mvn >/dev/null || missing+=(maven)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  if is_root; then SUDO=(); elif command -v sudo >/dev/null; then SUDO=(sudo); else
    die "missing packages ${missing[*]}: install them (apt-get install ${missing[*]}) and re-run"
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  # The package scripts must not start a system cluster on 5432 for us; we never touch it.
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Kafka from Maven Central: the runtime closure of the pom, copied into one lib folder. The
# stamp holds the pom's checksum, so a changed pin resolves again and nothing else does.
pom="$ROOT/deploy/local/kafka/pom.xml"
want="$(sha256sum "$pom" | cut -d' ' -f1)"
if [ "$(cat "$KAFKA_HOME/.stamp" 2>/dev/null)" != "$want" ] || [ ! -f "$KAFKA_HOME/libs/kafka_2.13-$KAFKA_VERSION.jar" ]; then
  log "resolving Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_HOME/libs"
  rm -rf "$KAFKA_HOME/libs.tmp"
  mvn -B -q -f "$pom" org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_HOME/libs.tmp" >/dev/null \
    || die "could not resolve Kafka's jars from Maven Central (see: mvn -f $pom dependency:tree)"
  rm -rf "$KAFKA_HOME/libs" && mv "$KAFKA_HOME/libs.tmp" "$KAFKA_HOME/libs"
  echo "$want" > "$KAFKA_HOME/.stamp"
fi

fi

if [ "$what" != stack ] && ! cargo nextest --version 2>/dev/null | grep -q "$NEXTEST_VERSION"; then
  log "installing cargo-nextest $NEXTEST_VERSION into $CARGO_BIN (about 4 min, once)"
  cargo install cargo-nextest --version "$NEXTEST_VERSION" --locked --quiet
fi

if [ "$what" != nextest ] && { [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import confluent_kafka, fastavro, requests" 2>/dev/null \
   || [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "${PY_PACKAGES[*]}" ]; }; then
  log "creating Python venv with ${PY_PACKAGES[*]} in $VENV"
  mkdir -p "$STATE"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
  echo "${PY_PACKAGES[*]}" > "$VENV/.requirements"
fi
log "bootstrap complete"
