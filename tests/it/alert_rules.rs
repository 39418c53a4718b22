//! The alert rules as a contract: every alert in deploy/prometheus/alerts.yml has a runbook
//! section, a promtool test where it fires and one where it does not, and only uses metrics
//! that docs/METRICS.md documents (Prometheus accepts any metric name, so a typo would give an
//! alert that can never fire). promtool itself runs in `make test-rules`.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::Value;

use super::prometheus::{documented_metrics, names_in};
use super::support::root;

fn yaml(path: &str) -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(root().join(path)).unwrap()).unwrap()
}

#[test]
fn every_alert_has_runbook_tests_and_documented_metrics() {
    let rules = yaml("deploy/prometheus/alerts.yml");
    let docs = documented_metrics();
    let runbook = std::fs::read_to_string(root().join("docs/RUNBOOK.md")).unwrap();
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"]
                .as_str()
                .expect("only alerting rules")
                .to_string();
            let expr = rule["expr"].as_str().unwrap();
            for n in names_in(expr) {
                assert!(
                    docs.contains_key(&n),
                    "{name}: {n} is not in docs/METRICS.md"
                );
            }
            assert!(
                rule["labels"]["severity"].as_str().is_some(),
                "{name}: no severity"
            );
            let anchor = format!("docs/RUNBOOK.md#{}", name.to_lowercase());
            assert_eq!(
                rule["annotations"]["runbook"].as_str(),
                Some(anchor.as_str())
            );
            assert!(
                runbook.contains(&format!("\n## {name}\n")),
                "{name}: no `## {name}` section in docs/RUNBOOK.md"
            );
            assert!(alerts.insert(name), "duplicate alert");
        }
    }
    // Firing and quiet tests per alert.
    let tests = yaml("deploy/prometheus/alerts_test.yml");
    let mut seen: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for t in tests["tests"].as_sequence().unwrap() {
        for a in t["alert_rule_test"].as_sequence().unwrap() {
            let name = a["alertname"].as_str().unwrap().to_string();
            let fires = !a["exp_alerts"].as_sequence().unwrap().is_empty();
            let e = seen.entry(name).or_default();
            if fires {
                e.0 = true;
            } else {
                e.1 = true;
            }
        }
    }
    for a in &alerts {
        assert_eq!(
            seen.get(a),
            Some(&(true, true)),
            "{a}: needs a test where it fires and one where it does not"
        );
    }
    for a in seen.keys() {
        assert!(alerts.contains(a), "test for unknown alert {a}");
    }
}
