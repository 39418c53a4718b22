"""Readiness probe for the local broker: exit 0 once a metadata request is answered.

Usage: ready.py BOOTSTRAP [WAIT_SECS]. Retries until WAIT_SECS (default 2) have passed. An open
port is not enough: a metadata answer that lists a broker is.
"""
import sys
import time

from confluent_kafka.admin import AdminClient

bootstrap = sys.argv[1]
deadline = time.monotonic() + (float(sys.argv[2]) if len(sys.argv) > 2 else 2.0)
admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
err = None
while time.monotonic() < deadline:
    try:
        if admin.list_topics(timeout=1.0).brokers:
            sys.exit(0)
    except Exception as e:  # KafkaException: transport failure or timeout
        err = e
    time.sleep(0.2)
print(f"broker at {bootstrap} did not answer a metadata request: {err}", file=sys.stderr)
sys.exit(1)
