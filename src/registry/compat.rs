//! Compatibility levels and checks, with the semantics of Confluent's registry:
//!
//! | level      | a new schema must …                                        |
//! |------------|------------------------------------------------------------|
//! | `BACKWARD` | read data written with the latest version                  |
//! | `FORWARD`  | write data the latest version can read                     |
//! | `FULL`     | both                                                       |
//! | `*_TRANSITIVE` | … the same against every earlier version, not just the latest |
//! | `NONE`     | anything goes                                              |
//!
//! The reader/writer check itself is Avro schema resolution from `apache-avro`.

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;

pub use crate::config::Compatibility;

impl Compatibility {
    /// Check `new` against the existing versions of a subject (oldest first). Returns the
    /// reasons it is incompatible; empty means compatible.
    pub fn check(self, new: &Schema, existing: &[&Schema]) -> Vec<String> {
        if self == Compatibility::None || existing.is_empty() {
            return vec![];
        }
        let against: Vec<(usize, &Schema)> = if self.transitive() {
            existing.iter().copied().enumerate().collect()
        } else {
            vec![(existing.len() - 1, existing[existing.len() - 1])]
        };
        let backward = matches!(
            self,
            Compatibility::Backward
                | Compatibility::BackwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        );
        let forward = matches!(
            self,
            Compatibility::Forward
                | Compatibility::ForwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        );
        let mut reasons = Vec::new();
        let (new_plain, new_dec) = without_decimals(new);
        for (idx, old) in against {
            let (old_plain, old_dec) = without_decimals(old);
            for (path, scale) in &new_dec {
                if let Some(old_scale) = old_dec.get(path) {
                    if old_scale != scale {
                        reasons.push(format!(
                            "{path}: decimal scale changed from {old_scale} to {scale} (version index {idx})"
                        ));
                    }
                }
            }
            let (old, new) = (&old_plain, &new_plain);
            if backward {
                if let Err(e) = SchemaCompatibility::can_read(old, new) {
                    reasons.push(format!(
                        "new schema cannot read data written with version index {idx}: {e}"
                    ));
                }
            }
            if forward {
                if let Err(e) = SchemaCompatibility::can_read(new, old) {
                    reasons.push(format!(
                        "version index {idx} cannot read data written with the new schema: {e}"
                    ));
                }
            }
        }
        reasons
    }
}

/// apache-avro 0.20's resolution check does not handle the `decimal` logical type (it answers
/// "inconclusive" for any schema containing one). Decimals resolve like their underlying
/// `bytes`/`fixed` as long as the scale is unchanged, so: strip the logical type for the
/// structural check and compare scales by field path separately.
fn without_decimals(schema: &Schema) -> (Schema, std::collections::BTreeMap<String, u64>) {
    fn walk(
        v: &mut serde_json::Value,
        path: &str,
        out: &mut std::collections::BTreeMap<String, u64>,
    ) {
        match v {
            serde_json::Value::Object(m) => {
                if m.get("logicalType").and_then(|l| l.as_str()) == Some("decimal") {
                    out.insert(
                        path.to_string(),
                        m.get("scale").and_then(|s| s.as_u64()).unwrap_or(0),
                    );
                    m.remove("logicalType");
                    m.remove("precision");
                    m.remove("scale");
                }
                let here = match m.get("name").and_then(|n| n.as_str()) {
                    Some(n) => format!("{path}.{n}"),
                    None => path.to_string(),
                };
                for (k, child) in m.iter_mut() {
                    if k == "fields" || k == "type" || k == "items" || k == "values" {
                        walk(child, &here, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|c| walk(c, path, out)),
            _ => {}
        }
    }
    let mut out = std::collections::BTreeMap::new();
    let Ok(mut json) = serde_json::to_value(schema) else {
        return (schema.clone(), out);
    };
    walk(&mut json, "", &mut out);
    let plain = Schema::parse(&json).unwrap_or_else(|_| schema.clone());
    (plain, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(json: &str) -> Schema {
        Schema::parse_str(json).unwrap()
    }

    const V1: &str = r#"{"type":"record","name":"r","fields":[{"name":"a","type":"long"}]}"#;
    const V2_DEFAULT: &str = r#"{"type":"record","name":"r","fields":[{"name":"a","type":"long"},{"name":"b","type":["null","string"],"default":null}]}"#;
    const V2_NO_DEFAULT: &str = r#"{"type":"record","name":"r","fields":[{"name":"a","type":"long"},{"name":"b","type":"string"}]}"#;
    const V_DROPPED: &str = r#"{"type":"record","name":"r","fields":[]}"#;

    #[test]
    fn backward_allows_added_field_with_default_only() {
        let v1 = s(V1);
        assert!(Compatibility::Backward
            .check(&s(V2_DEFAULT), &[&v1])
            .is_empty());
        assert!(!Compatibility::Backward
            .check(&s(V2_NO_DEFAULT), &[&v1])
            .is_empty());
        // Dropping a field is backward compatible (the reader ignores it)...
        assert!(Compatibility::Backward
            .check(&s(V_DROPPED), &[&v1])
            .is_empty());
        // ...but not forward compatible (old readers need `a`, which has no default).
        assert!(!Compatibility::Forward
            .check(&s(V_DROPPED), &[&v1])
            .is_empty());
        assert!(!Compatibility::Full.check(&s(V_DROPPED), &[&v1]).is_empty());
    }

    #[test]
    fn transitive_checks_every_version() {
        // v1 has a required `b` (string), v2 drops it, v3 adds `b` back as long without default.
        let v1 = s(V2_NO_DEFAULT);
        let v2 = s(V1);
        let v3 = s(
            r#"{"type":"record","name":"r","fields":[{"name":"a","type":"long"},{"name":"b","type":"long","default":0}]}"#,
        );
        // Against the latest only, v3 is fine.
        assert!(Compatibility::Backward.check(&v3, &[&v1, &v2]).is_empty());
        // Transitively, v3 cannot read v1's string `b`.
        assert!(!Compatibility::BackwardTransitive
            .check(&v3, &[&v1, &v2])
            .is_empty());
        assert!(Compatibility::None.check(&v3, &[&v1, &v2]).is_empty());
    }

    #[test]
    fn parse_round_trips() {
        for l in [
            "NONE",
            "BACKWARD",
            "BACKWARD_TRANSITIVE",
            "FORWARD",
            "FORWARD_TRANSITIVE",
            "FULL",
            "FULL_TRANSITIVE",
        ] {
            assert_eq!(Compatibility::parse(l).unwrap().as_str(), l);
        }
        assert!(Compatibility::parse("SIDEWAYS").is_none());
    }
}
