//! Rules serde cannot express. Every violation is reported as `field.path: rule`, all at once,
//! so an operator fixes the file in one pass.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;

use super::{Config, DbUrl, GroupProtocol, Unmapped};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub rule: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.rule)
    }
}

#[derive(Debug, Clone, Default)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for ValidationErrors {}

impl ValidationErrors {
    fn push(&mut self, path: impl Into<String>, rule: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            rule: rule.into(),
        });
    }
}

/// PostgreSQL identifiers cutover creates (slot, publication): lower-case, digits, underscore.
fn is_pg_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Characters Kafka allows in topic names.
fn is_topic_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

fn check_db_url(errs: &mut ValidationErrors, path: &str, url: &DbUrl) {
    if url.expose().trim().is_empty() {
        errs.push(path, "must not be empty");
        return;
    }
    match url.expose().parse::<tokio_postgres::Config>() {
        Ok(c) => {
            if c.get_dbname().is_none() {
                errs.push(path, "must name a database (dbname)");
            }
            if c.get_hosts().is_empty() {
                errs.push(path, "must name a host");
            }
        }
        Err(e) => errs.push(
            path,
            format!("not a valid PostgreSQL connection string ({e})"),
        ),
    }
}

fn check_addr(errs: &mut ValidationErrors, path: &str, addr: &str, allow_empty: bool) {
    if addr.is_empty() {
        if !allow_empty {
            errs.push(path, "must not be empty");
        }
        return;
    }
    if addr.parse::<SocketAddr>().is_err() {
        errs.push(path, "must be a socket address like 127.0.0.1:9464");
    }
}

impl Config {
    /// Check every rule of every section; all violations are reported at once, each with its
    /// field path (`sinks[1].tables[0].filter`).
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        self.validate_pipeline(&mut e);
        self.validate_source(&mut e);
        self.validate_kafka(&mut e);
        self.validate_registry(&mut e);
        self.validate_observe(&mut e);
        self.validate_backsync(&mut e);
        self.validate_monitor(&mut e);
        self.validate_reconcile(&mut e);
        self.validate_sinks(&mut e);
        if e.0.is_empty() {
            Ok(())
        } else {
            Err(e)
        }
    }

    fn validate_pipeline(&self, e: &mut ValidationErrors) {
        if !is_pg_name(&self.name) {
            e.push(
                "name",
                "must be 1-63 characters of a-z, 0-9, _ and not start with a digit",
            );
        }
        if !is_topic_part(&self.topic_prefix) {
            e.push(
                "topic_prefix",
                "must be 1-200 characters of a-z, A-Z, 0-9, '.', '_', '-'",
            );
        }
    }

    fn validate_source(&self, e: &mut ValidationErrors) {
        let s = &self.source;
        check_db_url(e, "source.url", &s.url);
        if !is_pg_name(&s.slot) {
            e.push(
                "source.slot",
                "must be 1-63 characters of a-z, 0-9, _ (a replication slot name)",
            );
        }
        if !is_pg_name(&s.publication) {
            e.push(
                "source.publication",
                "must be 1-63 characters of a-z, 0-9, _",
            );
        }
        if s.schemas.is_empty() && s.tables.is_empty() {
            e.push(
                "source.tables",
                "source.tables and source.schemas are both empty: nothing to capture",
            );
        }
        for (i, schema) in s.schemas.iter().enumerate() {
            if schema.is_empty() {
                e.push(format!("source.schemas[{i}]"), "must not be empty");
            }
        }
        for (i, t) in s.tables.iter().enumerate() {
            match t.split_once('.') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() => {}
                _ => e.push(
                    format!("source.tables[{i}]"),
                    format!("{t:?} must be schema-qualified: \"schema.table\""),
                ),
            }
        }
        for (t, cols) in &s.key_columns {
            if !t.contains('.') {
                e.push(
                    format!("source.key_columns.{t}"),
                    "table must be schema-qualified: \"schema.table\"",
                );
            }
            if cols.is_empty() {
                e.push(
                    format!("source.key_columns.{t}"),
                    "must list at least one column",
                );
            }
        }
        if s.heartbeat_interval_secs == 0 {
            e.push("source.heartbeat_interval_secs", "must be at least 1");
        }
        if s.status_interval_secs == 0 {
            e.push("source.status_interval_secs", "must be at least 1");
        }
        if s.connect_timeout_secs == 0 {
            e.push("source.connect_timeout_secs", "must be at least 1");
        }
        if s.backfill_window_max_keys == 0 {
            e.push("source.backfill_window_max_keys", "must be at least 1");
        }
        if s.backfill_window_max_secs == 0 {
            e.push("source.backfill_window_max_secs", "must be at least 1");
        }
        if s.standby_poll_ms < 10 {
            e.push("source.standby_poll_ms", "must be at least 10");
        }
        for (t, cols) in &s.exclude_columns {
            let keys = s.key_columns.get(t);
            for c in cols {
                if keys.is_some_and(|k| k.contains(c)) {
                    e.push(
                        format!("source.exclude_columns.{t}"),
                        format!(
                            "{c:?} is a key column (source.key_columns) and cannot be left out"
                        ),
                    );
                }
            }
            if cols.is_empty() {
                e.push(
                    format!("source.exclude_columns.{t}"),
                    "must list at least one column",
                );
            }
        }
        for (t, cols) in &s.truncate_columns {
            for (c, bytes) in cols {
                if *bytes == 0 {
                    e.push(
                        format!("source.truncate_columns.{t}.{c}"),
                        "must be at least 1 byte (use exclude_columns to leave a column out)",
                    );
                }
                if s.exclude_columns.get(t).is_some_and(|x| x.contains(c)) {
                    e.push(
                        format!("source.truncate_columns.{t}.{c}"),
                        "is also in source.exclude_columns: choose one",
                    );
                }
            }
        }
    }

    fn validate_kafka(&self, e: &mut ValidationErrors) {
        let k = &self.kafka;
        if k.brokers.is_empty() {
            e.push("kafka.brokers", "must not be empty");
        }
        for (i, b) in k.brokers.iter().enumerate() {
            let ok = b
                .rsplit_once(':')
                .map(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                .unwrap_or(false);
            if !ok {
                e.push(
                    format!("kafka.brokers[{i}]"),
                    format!("{b:?} must be host:port"),
                );
            }
        }
        if k.partitions < 1 {
            e.push("kafka.partitions", "must be at least 1");
        }
        if k.replication_factor < 1 {
            e.push("kafka.replication_factor", "must be at least 1");
        }
        if k.request_timeout_ms < 100 {
            e.push("kafka.request_timeout_ms", "must be at least 100");
        }
        if k.client_id.is_empty() {
            e.push("kafka.client_id", "must not be empty");
        }
        for key in k.group_protocol.rejected_client_settings() {
            if k.properties.contains_key(*key) {
                e.push(
                    format!("kafka.properties.{key}"),
                    format!(
                        "is not accepted with kafka.group_protocol = \"{}\"{}",
                        k.group_protocol.as_str(),
                        if k.group_protocol == GroupProtocol::Consumer {
                            " (the broker owns it: group.consumer.* broker settings)"
                        } else {
                            ""
                        }
                    ),
                );
            }
        }
        for key in [
            "bootstrap.servers",
            "enable.auto.offset.store",
            "enable.idempotence",
            "group.protocol",
        ] {
            if k.properties.contains_key(key) {
                e.push(
                    format!("kafka.properties.{key}"),
                    "is managed by cutover and must not be overridden",
                );
            }
        }
    }

    fn validate_registry(&self, e: &mut ValidationErrors) {
        match url::Url::parse(&self.registry.url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(_) => e.push("registry.url", "must be an http:// or https:// URL"),
            Err(err) => e.push("registry.url", format!("not a URL ({err})")),
        }
        if self.registry.password.is_some() && self.registry.username.is_none() {
            e.push(
                "registry.username",
                "must be set when registry.password is set",
            );
        }
        if url::Url::parse(&self.registry.url)
            .is_ok_and(|u| !u.username().is_empty() || u.password().is_some())
        {
            e.push(
                "registry.url",
                "holds credentials: put them in registry.username and registry.password \
                 (or password_file), which are never printed",
            );
        }
        if self.registry.token.is_some() && self.registry.username.is_some() {
            e.push(
                "registry.token",
                "set either a token or registry.username/password, not both",
            );
        }
        if self.registry.ca_file.is_some() && self.registry.url.starts_with("http://") {
            e.push("registry.ca_file", "set, but registry.url is not https://");
        }
        check_addr(
            e,
            "registry_server.listen",
            &self.registry_server.listen,
            false,
        );
        let rs = &self.registry_server;
        if rs.password.is_some() != rs.username.is_some() {
            e.push(
                "registry_server.username",
                "registry_server.username and registry_server.password go together",
            );
        }
        for (field, v) in [
            ("registry_server.max_body_bytes", rs.max_body_bytes as u64),
            ("registry_server.request_timeout_ms", rs.request_timeout_ms),
            (
                "registry_server.max_concurrent_requests",
                rs.max_concurrent_requests as u64,
            ),
        ] {
            if v == 0 {
                e.push(field, "must be at least 1");
            }
        }
    }

    fn validate_observe(&self, e: &mut ValidationErrors) {
        check_addr(e, "observe.listen", &self.observe.listen, true);
        if !matches!(self.observe.log_format.as_str(), "text" | "json") {
            e.push("observe.log_format", "must be \"text\" or \"json\"");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.observe.log_level).is_err() {
            e.push("observe.log_level", "not a valid tracing filter directive");
        }
    }

    fn validate_backsync(&self, e: &mut ValidationErrors) {
        if let Some(b) = &self.backsync {
            check_db_url(e, "backsync.url", &b.url);
            if let Some(u) = &b.legacy_url {
                check_db_url(e, "backsync.legacy_url", u);
            }
            if b.url.expose() == self.source.url.expose() {
                e.push(
                    "backsync.url",
                    "must be the new store, not the legacy source.url",
                );
            }
            for (path, v) in [
                ("backsync.slot", &b.slot),
                ("backsync.publication", &b.publication),
            ] {
                if !is_pg_name(v) {
                    e.push(path, "must be 1-63 characters of a-z, 0-9, _");
                }
            }
            if b.slot == self.source.slot && b.publication == self.source.publication {
                // Different databases could share names; say it only if both are equal.
                e.push("backsync.slot", "use names other than source.slot/publication, so the two directions are told apart");
            }
            if b.schemas.is_empty() && b.tables.is_empty() {
                e.push(
                    "backsync.tables",
                    "backsync.tables and backsync.schemas are both empty: nothing to capture",
                );
            }
            if !self.sinks.iter().any(|s| s.name == b.forward_sink) {
                e.push(
                    "backsync.forward_sink",
                    format!("no sink named {:?} in sinks[]", b.forward_sink),
                );
            }
            if self
                .sinks
                .iter()
                .any(|s| s.name == crate::config::BACKSYNC_SINK)
            {
                e.push(
                    "sinks",
                    "the sink name \"backsync\" is reserved for the back-sync",
                );
            }
            if b.mappings.is_empty() && b.unmapped_tables == Unmapped::Skip {
                e.push(
                    "backsync.mappings",
                    "empty and unmapped_tables = \"skip\": no new-store table would be applied to legacy",
                );
            }
            for (j, m) in b.mappings.iter().enumerate() {
                if !m
                    .source
                    .split_once('.')
                    .is_some_and(|(a, c)| !a.is_empty() && !c.is_empty())
                {
                    e.push(
                        format!("backsync.mappings[{j}].source"),
                        "must be schema.table",
                    );
                }
            }
        }
    }

    fn validate_monitor(&self, e: &mut ValidationErrors) {
        if !(100..=600_000).contains(&self.monitor.interval_ms) {
            e.push("monitor.interval_ms", "must be between 100 and 600000");
        }
        if self.monitor.stalled_after_secs == 0 {
            e.push("monitor.stalled_after_secs", "must be at least 1");
        }
    }

    fn validate_reconcile(&self, e: &mut ValidationErrors) {
        let r = &self.reconcile;
        if r.chunk_rows < 2 {
            e.push("reconcile.chunk_rows", "must be at least 2");
        }
        if !(0.0..=1.0).contains(&r.gate_min_parity) {
            e.push("reconcile.gate_min_parity", "must be between 0 and 1");
        }
        for (i, s) in r.sinks.iter().enumerate() {
            if !self.sinks.iter().any(|k| &k.name == s) {
                e.push(
                    format!("reconcile.sinks[{i}]"),
                    format!("no sink named {s:?}"),
                );
            }
        }
    }

    fn validate_sinks(&self, e: &mut ValidationErrors) {
        let mut seen = HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let p = format!("sinks[{i}]");
            if !is_topic_part(&sink.name) || sink.name.contains('.') {
                e.push(
                    format!("{p}.name"),
                    "must be 1-200 characters of a-z, A-Z, 0-9, '_', '-'",
                );
            }
            if sink.name == "capture" {
                e.push(
                    format!("{p}.name"),
                    "\"capture\" is reserved (the capture dead-letter topic is <prefix>.dlq.capture)",
                );
            }
            if !seen.insert(sink.name.as_str()) {
                e.push(
                    format!("{p}.name"),
                    format!("duplicate sink name {:?}", sink.name),
                );
            }
            check_db_url(e, &format!("{p}.url"), &sink.url);
            if sink.connect_timeout_secs == 0 {
                e.push(format!("{p}.connect_timeout_secs"), "must be at least 1");
            }
            if sink.batch_max_rows == 0 {
                e.push(format!("{p}.batch_max_rows"), "must be at least 1");
            }
            if sink.batch_max_bytes < 1024 {
                e.push(format!("{p}.batch_max_bytes"), "must be at least 1024");
            }
            if sink.batch_max_ms == 0 {
                e.push(format!("{p}.batch_max_ms"), "must be at least 1");
            }
            if sink.batch_linger_ms > sink.batch_max_ms {
                e.push(
                    format!("{p}.batch_linger_ms"),
                    "must not exceed batch_max_ms (a batch never stays open longer)",
                );
            }
            if !(1..=16).contains(&sink.apply_connections) {
                e.push(
                    format!("{p}.apply_connections"),
                    "must be between 1 and 16 (each connection holds one of the sink's 32 replication origins)",
                );
            }
            let mut sources = HashSet::new();
            for (j, t) in sink.tables.iter().enumerate() {
                check_table_mapping(e, &format!("{p}.tables[{j}]"), t, &mut sources);
            }
        }
    }
}

/// One `[[sinks.tables]]` entry at `tp`; `sources` collects the source tables seen so far.
fn check_table_mapping<'a>(
    e: &mut ValidationErrors,
    tp: &str,
    t: &'a super::TableMapping,
    sources: &mut HashSet<&'a str>,
) {
    let qualified = |s: &str| {
        s.split_once('.')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
    };
    if !qualified(&t.source) {
        e.push(format!("{tp}.source"), "must be schema.table");
    } else if !sources.insert(t.source.as_str()) {
        e.push(
            format!("{tp}.source"),
            format!("{} is mapped twice", t.source),
        );
    }
    if let Some(target) = &t.target {
        if !qualified(target) {
            e.push(format!("{tp}.target"), "must be schema.table");
        }
    }
    for (col, expr) in &t.computed {
        if let Err(msg) = crate::expr::Expr::parse(expr) {
            e.push(format!("{tp}.computed.{col}"), msg);
        }
    }
    if let Some(f) = &t.filter {
        if let Err(msg) = crate::expr::Expr::parse(f) {
            e.push(format!("{tp}.filter"), msg);
        }
    }
    if let Some(r) = &t.route {
        if r.targets.is_empty() {
            e.push(format!("{tp}.route.targets"), "must not be empty");
        }
        for (v, target) in &r.targets {
            if !qualified(target) {
                e.push(format!("{tp}.route.targets.{v}"), "must be schema.table");
            }
        }
    }
    for c in &t.drop {
        if t.rename.contains_key(c) {
            e.push(
                format!("{tp}.drop"),
                format!("{c} is both dropped and renamed"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    fn base() -> Config {
        Config::load_with_env(None, Vec::<(String, String)>::new()).unwrap()
    }

    #[test]
    fn reports_every_violation_with_its_path() {
        let mut c = base();
        c.name = "Bad Name".into();
        c.source.slot = "".into();
        c.kafka.partitions = 0;
        c.kafka.brokers = vec!["nohost".into()];
        c.registry.url = "ftp://x".into();
        c.observe.log_format = "xml".into();
        c.sinks[1].name = c.sinks[0].name.clone();
        let errs = c.validate().unwrap_err();
        let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "name",
            "source.slot",
            "kafka.partitions",
            "kafka.brokers[0]",
            "registry.url",
            "observe.log_format",
            "sinks[1].name",
        ] {
            assert!(paths.contains(&want), "missing {want} in {paths:?}");
        }
    }

    #[test]
    fn settings_the_group_protocol_rejects_are_named() {
        let mut c = base();
        c.kafka.group_protocol = GroupProtocol::Consumer;
        c.kafka
            .properties
            .insert("session.timeout.ms".into(), "6000".into());
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.0[0].path, "kafka.properties.session.timeout.ms");
        assert!(
            errs.0[0].rule.contains("group_protocol"),
            "{}",
            errs.0[0].rule
        );
        // The same setting is fine with the classic protocol.
        c.kafka.group_protocol = GroupProtocol::Classic;
        assert!(c.validate().is_ok());
        // group.protocol itself is only set through kafka.group_protocol.
        c.kafka
            .properties
            .insert("group.protocol".into(), "consumer".into());
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.0[0].path, "kafka.properties.group.protocol");
    }

    #[test]
    fn bad_database_url_is_named() {
        let mut c = base();
        c.sinks[0].url = DbUrl::new("host=h user=u");
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.0[0].path, "sinks[0].url");
        assert!(errs.0[0].rule.contains("dbname"));
    }

    #[test]
    fn managed_kafka_properties_cannot_be_overridden() {
        let mut c = base();
        c.kafka
            .properties
            .insert("enable.auto.offset.store".into(), "true".into());
        let errs = c.validate().unwrap_err();
        assert_eq!(errs.0[0].path, "kafka.properties.enable.auto.offset.store");
    }
}
