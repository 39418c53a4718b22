//! The metrics foundation: exporter on a configurable address, build info, health endpoints.

use cutover::observe::{self, names, Readiness};

#[tokio::test]
async fn metrics_healthz_readyz() {
    let handle = observe::install_recorder().unwrap();
    let readiness = Readiness::new();
    let (addr, _task) = observe::serve(
        "127.0.0.1:0".parse().unwrap(),
        handle,
        readiness.clone(),
        std::future::pending(),
    )
    .await
    .unwrap();
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();

    let body = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = body
        .lines()
        .find(|l| l.starts_with(names::BUILD_INFO))
        .unwrap_or_else(|| panic!("no build info in:\n{body}"));
    assert!(
        line.contains(&format!("version=\"{}\"", observe::VERSION)),
        "{line}"
    );
    assert!(line.contains("revision=\""), "{line}");
    assert!(line.ends_with(" 1"), "{line}");
    assert!(body.contains("# HELP cutover_build_info"), "{body}");

    let r = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Not ready until every registered check passes.
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    readiness.set("broker", true);
    readiness.set("source", false);
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["checks"]["source"], false);
    readiness.set("source", true);
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
