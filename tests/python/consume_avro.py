"""Consume Avro change events with the stock confluent-kafka client and AvroDeserializer.

Usage: consume_avro.py BOOTSTRAP REGISTRY_URL TOPIC COUNT [TIMEOUT_SECS]
Prints one JSON line per message: {"partition", "offset", "key", "value"} with Avro values
decoded by fastavro (decimals, dates, bytes rendered as strings).
"""
import base64
import datetime
import decimal
import json
import sys
import time
import uuid

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

bootstrap, registry, topic, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 60.0

client = SchemaRegistryClient({"url": registry})
deser = AvroDeserializer(client)
consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": f"py-{topic}-{time.time()}",
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
})
consumer.subscribe([topic])


def plain(v):
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, bytes):
        return "hex:" + v.hex()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, (datetime.date, datetime.time, datetime.datetime)):
        return v.isoformat()
    if isinstance(v, uuid.UUID):
        return str(v)
    return v


seen = 0
deadline = time.time() + timeout
while seen < count and time.time() < deadline:
    m = consumer.poll(1.0)
    if m is None or m.error():
        continue
    key = deser(m.key(), SerializationContext(topic, MessageField.KEY)) if m.key() else None
    value = deser(m.value(), SerializationContext(topic, MessageField.VALUE))
    print(json.dumps({"partition": m.partition(), "offset": m.offset(), "key": plain(key),
                      "value": plain(value)}, ensure_ascii=False), flush=True)
    seen += 1
consumer.close()
if seen < count:
    sys.exit(f"only {seen} of {count} messages within {timeout}s")
