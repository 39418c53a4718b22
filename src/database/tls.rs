//! TLS to PostgreSQL with libpq's `sslmode` semantics, on every connection cutover opens: SQL
//! connections (tokio-postgres over native-tls/OpenSSL) and the replication stream
//! (pgwire-replication over rustls) read the same settings from the same connection string.
//!
//! ```text
//!   "postgres://h/db?sslmode=verify-full&sslrootcert=/ca.pem"
//!        │ split()
//!        ├─▶ "postgres://h/db"            what tokio-postgres parses (it knows only
//!        │                                disable/prefer/require, and no certificate files)
//!        └─▶ Tls { mode, root_cert, cert, key }
//!               ├─▶ sql_connector()       native-tls: roots, hostname check, client identity
//!               └─▶ replication()         pgwire_replication::TlsConfig, same mode and files
//! ```
//!
//! | sslmode | encrypted | chain verified | hostname verified |
//! |---|---|---|---|
//! | `disable` | never | – | – |
//! | `allow`, `prefer` (default) | if the server offers it | only with `sslrootcert` | no |
//! | `require` | always | only with `sslrootcert` (libpq: a root file turns it into verify-ca) | no |
//! | `verify-ca` | always | yes | no |
//! | `verify-full` | always | yes | yes |
//!
//! `sslrootcert` is a PEM file of trusted CAs (only they are trusted) or `system` (the
//! platform's store for SQL connections, the Mozilla roots for replication); `verify-ca` and
//! `verify-full` need one of them. `sslcert`/`sslkey` are the client certificate and its key
//! (PEM; the key in PKCS#8, `BEGIN PRIVATE KEY`). `allow` is treated as `prefer` (cutover
//! never prefers plain text). One stricter case: `prefer` with `sslrootcert` makes the
//! replication stream require TLS (pgwire-replication cannot verify and still fall back), while
//! SQL connections fall back to plain text as libpq does. A failed certificate check is a trust failure
//! ([`ErrorKind::Auth`]): fatal, never retried.

use std::path::PathBuf;

use crate::error::{Error, ErrorKind, Result};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file; only its certificates are trusted.
    File(PathBuf),
    /// `sslrootcert=system`.
    System,
}

/// The TLS settings of one connection string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl Tls {
    fn set(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
        match key {
            "sslmode" => {
                self.mode = SslMode::parse(value).ok_or_else(|| {
                    format!(
                        "sslmode={value}: expected disable, allow, prefer, require, verify-ca or verify-full"
                    )
                })?
            }
            "sslrootcert" => {
                self.root_cert = Some(if value == "system" {
                    RootCert::System
                } else {
                    RootCert::File(value.into())
                })
            }
            "sslcert" => self.cert = Some(value.into()),
            "sslkey" => self.key = Some(value.into()),
            _ => unreachable!("only KEYS are set"),
        }
        Ok(())
    }

    fn check(&self) -> std::result::Result<(), String> {
        if matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull) && self.root_cert.is_none()
        {
            return Err(
                "sslmode=verify-ca and verify-full need sslrootcert (a PEM file of the CAs to trust, or 'system')"
                    .into(),
            );
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(
                "sslcert and sslkey go together (the client certificate and its key)".into(),
            );
        }
        Ok(())
    }

    /// The chain is verified: `verify-*`, or `require`/`prefer` with a root certificate.
    pub fn verifies_chain(&self) -> bool {
        match self.mode {
            SslMode::Disable => false,
            SslMode::Prefer | SslMode::Require => self.root_cert.is_some(),
            SslMode::VerifyCa | SslMode::VerifyFull => true,
        }
    }

    /// The tokio-postgres mode: it encrypts, cutover's connector verifies.
    pub fn pg_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as M;
        match self.mode {
            SslMode::Disable => M::Disable,
            SslMode::Prefer => M::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => M::Require,
        }
    }

    /// The TLS connector of SQL connections (native-tls), as `sslmode` asks.
    pub fn sql_connector(&self, field: &str) -> Result<postgres_native_tls::MakeTlsConnector> {
        let mut b = native_tls::TlsConnector::builder();
        if !self.verifies_chain() {
            // prefer/require without a root certificate: encrypted, not authenticated (libpq).
            b.danger_accept_invalid_certs(true);
        }
        if self.mode != SslMode::VerifyFull {
            b.danger_accept_invalid_hostnames(true);
        }
        if let Some(RootCert::File(path)) = &self.root_cert {
            crate::trust::only_roots_from(&mut b, &format!("{field}: sslrootcert"), path)
                .map_err(Error::config)?;
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let c = read(field, "sslcert", cert)?;
            let k = read(field, "sslkey", key)?;
            let id = native_tls::Identity::from_pkcs8(&c, &k).map_err(|e| {
                Error::config(format!(
                    "{field}: sslcert {} / sslkey {}: not a PEM certificate and PKCS#8 key ({e})",
                    cert.display(),
                    key.display()
                ))
            })?;
            b.identity(id);
        }
        let tls = b.build().map_err(|e| {
            Error::with_source(
                ErrorKind::Environment,
                format!("{field}: initialising TLS"),
                e,
            )
        })?;
        Ok(postgres_native_tls::MakeTlsConnector::new(tls))
    }

    /// The replication stream's TLS config: the same mode and files.
    pub fn replication(&self, host: &str) -> pgwire_replication::TlsConfig {
        use pgwire_replication::SslMode as M;
        let ca = match &self.root_cert {
            Some(RootCert::File(p)) => Some(p.clone()),
            _ => None,
        };
        let mode = match self.mode {
            SslMode::Disable => M::Disable,
            // libpq: a root certificate makes prefer/require verify the chain.
            SslMode::Prefer if self.root_cert.is_some() => M::VerifyCa,
            SslMode::Prefer => M::Prefer,
            SslMode::Require if self.root_cert.is_some() => M::VerifyCa,
            SslMode::Require => M::Require,
            SslMode::VerifyCa => M::VerifyCa,
            SslMode::VerifyFull => M::VerifyFull,
        };
        let mut t = pgwire_replication::TlsConfig {
            mode,
            ca_pem_path: ca,
            ..Default::default()
        };
        if mode == M::VerifyFull {
            t = t.with_sni_hostname(host);
        }
        if let (Some(c), Some(k)) = (&self.cert, &self.key) {
            t = t.with_client_cert(c, k);
        }
        t
    }
}

fn read(field: &str, key: &str, path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::config(format!(
            "{field}: {key} {}: cannot read it ({e})",
            path.display()
        ))
    })
}

/// Split `conninfo` (a `postgres://` URL or libpq `key=value` pairs) into the connection
/// string without the TLS keys and the TLS settings. Errors name the offending key.
pub fn split(conninfo: &str) -> std::result::Result<(String, Tls), String> {
    let mut tls = Tls::default();
    let rest = if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        // Work on the raw query: the pairs that stay are kept byte for byte (re-encoding them
        // as a form would turn `%20` into `+`, which libpq and tokio-postgres read literally).
        let (head, query) = match conninfo.split_once('?') {
            Some((h, q)) => (h, q),
            None => (conninfo, ""),
        };
        let decode = |v: &str| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|e| format!("query parameter {v:?}: not UTF-8 ({e})"))
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(k)?;
            if KEYS.contains(&key.as_str()) {
                tls.set(&key, &decode(v)?)?;
            } else {
                kept.push(pair);
            }
        }
        if kept.is_empty() {
            head.to_string()
        } else {
            format!("{head}?{}", kept.join("&"))
        }
    } else {
        let mut kept = Vec::new();
        for (k, v) in key_values(conninfo)? {
            if KEYS.contains(&k.as_str()) {
                tls.set(&k, &v)?;
            } else {
                kept.push(format!("{k}={}", quote(&v)));
            }
        }
        kept.join(" ")
    };
    tls.check()?;
    Ok((rest, tls))
}

/// libpq `key = value` pairs; values unquoted (up to whitespace) or single-quoted with `\'`
/// and `\\` escapes.
fn key_values(s: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            it.next();
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.next() != Some('=') {
            return Err(format!("'{key}' has no value (expected key=value pairs)"));
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut value = String::new();
        if it.peek() == Some(&'\'') {
            it.next();
            loop {
                match it.next() {
                    None => return Err(format!("{key}: unterminated quoted value")),
                    Some('\\') => match it.next() {
                        Some(c) => value.push(c),
                        None => return Err(format!("{key}: unterminated quoted value")),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                it.next();
            }
        }
        out.push((key, value));
    }
}

fn quote(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return v.to_string();
    }
    let mut q = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('\'');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_keys_are_taken_out_and_the_rest_kept() {
        let (rest, tls) = split(
            "postgres://u@db.example:5432/app?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x&sslcert=/c.pem&sslkey=/k.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u@db.example:5432/app?application_name=x");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(RootCert::File("/etc/ca.pem".into())));
        assert_eq!(tls.cert, Some("/c.pem".into()));
        assert_eq!(tls.key, Some("/k.pem".into()));
        let (rest, tls) = split("postgresql://h/app?sslmode=disable").unwrap();
        assert_eq!(rest, "postgresql://h/app");
        assert_eq!(tls.mode, SslMode::Disable);
        // What stays is kept byte for byte: `%20` must not become `+` (read literally).
        let (rest, tls) = split(
            "postgres://u:p%40ss@h/app?options=-c%20search_path%3Dx&sslrootcert=%2Fca%20dir%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p%40ss@h/app?options=-c%20search_path%3Dx"
        );
        assert_eq!(tls.root_cert, Some(RootCert::File("/ca dir/ca.pem".into())));
    }

    #[test]
    fn key_value_strings_keep_their_quoting() {
        let (rest, tls) =
            split("host=h dbname = app password='p w\\'d' sslmode=require sslrootcert=system")
                .unwrap();
        assert_eq!(rest, "host=h dbname=app password='p w\\'d'");
        assert_eq!(tls.mode, SslMode::Require);
        assert_eq!(tls.root_cert, Some(RootCert::System));
        assert!(tls.verifies_chain());
        let parsed: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(parsed.get_password(), Some(&b"p w'd"[..]));
    }

    #[test]
    fn the_default_is_prefer_and_allow_is_prefer() {
        assert_eq!(split("postgres://h/app").unwrap().1.mode, SslMode::Prefer);
        assert_eq!(
            split("postgres://h/app?sslmode=allow").unwrap().1.mode,
            SslMode::Prefer
        );
        assert!(!split("postgres://h/app").unwrap().1.verifies_chain());
    }

    #[test]
    fn bad_settings_name_the_key() {
        let e = split("postgres://h/app?sslmode=verify_full").unwrap_err();
        assert!(e.contains("sslmode=verify_full"), "{e}");
        let e = split("postgres://h/app?sslmode=verify-full").unwrap_err();
        assert!(e.contains("need sslrootcert"), "{e}");
        let e = split("postgres://h/app?sslmode=require&sslcert=/c.pem").unwrap_err();
        assert!(e.contains("sslcert and sslkey"), "{e}");
        let e = split("host=h sslmode").unwrap_err();
        assert!(e.contains("'sslmode' has no value"), "{e}");
        let e = split("host='h").unwrap_err();
        assert!(e.contains("unterminated"), "{e}");
    }

    #[test]
    fn the_replication_link_gets_the_same_mode_and_files() {
        use pgwire_replication::SslMode as M;
        let (_, tls) = split(
            "postgres://h/app?sslmode=verify-full&sslrootcert=/ca.pem&sslcert=/c.pem&sslkey=/k.pem",
        )
        .unwrap();
        let r = tls.replication("db.example");
        assert_eq!(r.mode, M::VerifyFull);
        assert_eq!(r.ca_pem_path, Some("/ca.pem".into()));
        assert_eq!(r.client_cert_pem_path, Some("/c.pem".into()));
        assert_eq!(r.client_key_pem_path, Some("/k.pem".into()));
        let (_, tls) = split("postgres://h/app?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(tls.replication("h").mode, M::VerifyCa);
        let (_, tls) = split("postgres://h/app?sslmode=require").unwrap();
        assert_eq!(tls.replication("h").mode, M::Require);
        let (_, tls) = split("postgres://h/app").unwrap();
        assert_eq!(tls.replication("h").mode, M::Prefer);
        let (_, tls) = split("postgres://h/app?sslmode=disable").unwrap();
        assert_eq!(tls.replication("h").mode, M::Disable);
    }
}
