"""Drive a schema registry with the stock confluent-kafka SchemaRegistryClient.

Usage: registry_client.py URL SUBJECT_PREFIX [USER:PASSWORD]
With credentials, it first checks that a client without them is refused (401), then uses them.
Prints one JSON object with what the client saw; exits non-zero on any unexpected answer.
"""
import json
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

url, prefix = sys.argv[1], sys.argv[2]
out = {}
conf = {"url": url}
if len(sys.argv) > 3:
    try:
        SchemaRegistryClient({"url": url}).get_subjects()
        out["anonymous_http_status"] = 200
    except SchemaRegistryError as e:
        out["anonymous_http_status"] = e.http_status_code
    conf["basic.auth.user.info"] = sys.argv[3]
client = SchemaRegistryClient(conf)
subject = f"{prefix}-value"

v1 = json.dumps({"type": "record", "name": "Order", "namespace": "app", "doc": "Bestellung – 注文", "fields": [
    {"name": "id", "type": "long"}, {"name": "note", "type": "string"}]}, ensure_ascii=False)
v2 = json.dumps({"type": "record", "name": "Order", "namespace": "app", "doc": "Bestellung – 注文", "fields": [
    {"name": "id", "type": "long"}, {"name": "note", "type": "string"},
    {"name": "total", "type": ["null", "double"], "default": None}]}, ensure_ascii=False)
bad = json.dumps({"type": "record", "name": "Order", "namespace": "app", "fields": [
    {"name": "id", "type": "long"}, {"name": "qty", "type": "int"}]})

id1 = client.register_schema(subject, Schema(v1, "AVRO"))
out["id1"] = id1
# Registering the same schema again returns the same id.
assert client.register_schema(subject, Schema(v1, "AVRO")) == id1
fetched = client.get_schema(id1)
assert json.loads(fetched.schema_str) == json.loads(v1), fetched.schema_str
assert fetched.schema_type in (None, "AVRO"), fetched.schema_type
out["fetched_doc"] = json.loads(fetched.schema_str)["doc"]

assert client.test_compatibility(subject, Schema(v2, "AVRO")) is True
assert client.test_compatibility(subject, Schema(bad, "AVRO")) is False
id2 = client.register_schema(subject, Schema(v2, "AVRO"))
out["id2"] = id2

try:
    client.register_schema(subject, Schema(bad, "AVRO"))
    raise SystemExit("incompatible schema was accepted")
except SchemaRegistryError as e:
    out["incompatible_http_status"] = e.http_status_code
    out["incompatible_error_code"] = e.error_code

latest = client.get_latest_version(subject)
out["latest_version"] = latest.version
out["latest_id"] = latest.schema_id
out["versions"] = client.get_versions(subject)
out["subjects"] = [s for s in client.get_subjects() if s.startswith(prefix)]
v = client.get_version(subject, 1)
out["version1_id"] = v.schema_id
looked_up = client.lookup_schema(subject, Schema(v1, "AVRO"))
out["lookup_version"] = looked_up.version
client.set_compatibility(subject_name=subject, level="FULL")
out["subject_level"] = client.get_compatibility(subject_name=subject)

try:
    client.get_schema(987654)
    raise SystemExit("unknown id was found")
except SchemaRegistryError as e:
    out["unknown_id_error_code"] = e.error_code

print(json.dumps(out, ensure_ascii=False))
