#!/usr/bin/env bash
# Install what the local stack and the tests need and a fresh machine may lack. Idempotent:
# every step checks first and does nothing when already satisfied.
#   - Debian packages: PostgreSQL 15 server, C libraries for rdkafka (SSL, SASL), Python venv,
#     Prometheus (promtool for the alert-rule tests, the server for the live alerting test)
#   - the Tansu broker binary (cargo install, cached in ~/.cargo/bin; 11-17 min the first time)
#   - a Python venv with the stock confluent-kafka client (used by tests as a reference client)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

APT_PACKAGES=(libssl-dev libsasl2-dev pkg-config python3-venv curl postgresql-15 postgresql-client-15 prometheus)
PY_PACKAGES=("confluent-kafka[avro]==2.12.1")

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
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

if [ -x "$TANSU_BIN" ] && "$TANSU_BIN" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  :
else
  log "installing Tansu $TANSU_VERSION (Kafka-protocol broker) into $CARGO_BIN; first build takes 11-17 min"
  cargo install tansu --version "$TANSU_VERSION" --locked --features libsql
fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import confluent_kafka, fastavro, requests" 2>/dev/null \
   || [ "$(cat "$VENV/.requirements" 2>/dev/null)" != "${PY_PACKAGES[*]}" ]; then
  log "creating Python venv with ${PY_PACKAGES[*]} in $VENV"
  mkdir -p "$STATE"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
  echo "${PY_PACKAGES[*]}" > "$VENV/.requirements"
fi
log "bootstrap complete"
