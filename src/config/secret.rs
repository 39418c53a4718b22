//! Secrets and connection strings that must never reach a log line or a printed config.
//!
//! Redaction is by construction: [`Secret`] and [`DbUrl`] print and serialize redacted, so
//! `tracing::info!(?config)` or `cutover check-config` cannot leak a password even by accident.
//! The raw value is only reachable through an explicit `expose()` call.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const REDACTED: &str = "<redacted>";

/// A secret string (password, token). Debug, Display and Serialize all print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The raw value; use only to hand it to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Environment overrides are type-guessed ("12345" becomes a number): accept any scalar.
        Ok(Secret(scalar_string(d)?))
    }
}

/// A PostgreSQL connection string (URL `postgres://user:pw@host/db` or key/value
/// `host=... password=...`). Prints and serializes with any password replaced.
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl(String);

impl DbUrl {
    pub fn new(s: impl Into<String>) -> Self {
        DbUrl(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn redacted(&self) -> String {
        redact_conninfo(&self.0)
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for DbUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for DbUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(DbUrl(String::deserialize(d)?))
    }
}

/// Replace the password in a libpq connection string, URL or key/value form.
pub fn redact_conninfo(s: &str) -> String {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        match url::Url::parse(s) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some(REDACTED));
                }
                let has_pw_param = u.query_pairs().any(|(k, _)| k == "password");
                if has_pw_param {
                    let pairs: Vec<(String, String)> = u
                        .query_pairs()
                        .map(|(k, v)| {
                            let v = if k == "password" {
                                REDACTED.to_string()
                            } else {
                                v.into_owned()
                            };
                            (k.into_owned(), v)
                        })
                        .collect();
                    u.query_pairs_mut().clear().extend_pairs(pairs);
                }
                // The URL encoder escapes `<`/`>`; show the marker as everywhere else.
                u.to_string()
                    .replace("%3Credacted%3E", REDACTED)
                    .replace("%3Credacted%3e", REDACTED)
            }
            // Unparseable URL: do not risk echoing it.
            Err(_) => REDACTED.to_string(),
        }
    } else {
        redact_key_values(s)
    }
}

fn redact_key_values(s: &str) -> String {
    // key=value pairs separated by whitespace; values may be single-quoted.
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("password") {
        let (before, after) = rest.split_at(pos);
        out.push_str(before);
        let after_key = &after["password".len()..];
        let trimmed = after_key.trim_start();
        if let Some(val) = trimmed.strip_prefix('=') {
            let val = val.trim_start();
            out.push_str("password=");
            out.push_str(REDACTED);
            rest = if let Some(q) = val.strip_prefix('\'') {
                // quoted value, with \' escapes
                let mut end = q.len();
                let bytes = q.as_bytes();
                let mut i = 0;
                while i < bytes.len() {
                    if bytes[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if bytes[i] == b'\'' {
                        end = i + 1;
                        break;
                    }
                    i += 1;
                }
                &q[end.min(q.len())..]
            } else {
                let end = val.find(char::is_whitespace).unwrap_or(val.len());
                &val[end..]
            };
        } else {
            out.push_str("password");
            rest = after_key;
        }
    }
    out.push_str(rest);
    out
}

/// librdkafka property names whose values are secrets.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.ends_with("password")
        || k.contains("secret")
        || k == "sasl.jaas.config"
        || k == "sasl.oauthbearer.config"
        || k == "ssl.key.pem"
        || k == "ssl_key"
}

fn scalar_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        U(u64),
        F(f64),
        B(bool),
    }
    Ok(match Scalar::deserialize(d)? {
        Scalar::S(s) => s,
        Scalar::I(i) => i.to_string(),
        Scalar::U(u) => u.to_string(),
        Scalar::F(f) => f.to_string(),
        Scalar::B(b) => b.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_redacted() {
        let r = redact_conninfo("postgres://app:hunter2@db.example:5432/app?sslmode=require");
        assert!(!r.contains("hunter2"), "{r}");
        assert!(r.contains("app:"), "{r}");
        assert!(r.contains("db.example:5432/app"), "{r}");
        let r = redact_conninfo("postgresql://u@h/db?password=hunter2&sslmode=disable");
        assert!(!r.contains("hunter2"), "{r}");
        assert!(r.contains("sslmode=disable"), "{r}");
    }

    #[test]
    fn key_value_password_is_redacted() {
        let r = redact_conninfo("host=h user=u password=hunter2 dbname=app");
        assert_eq!(r, "host=h user=u password=<redacted> dbname=app");
        let r = redact_conninfo("host=h password = 'hun ter\\'2' dbname=app");
        assert_eq!(r, "host=h password=<redacted> dbname=app");
        let r = redact_conninfo("host=h dbname=app");
        assert_eq!(r, "host=h dbname=app");
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<redacted>\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn secret_properties_are_recognised() {
        assert!(is_secret_property("sasl.password"));
        assert!(is_secret_property("ssl.key.password"));
        assert!(is_secret_property("sasl.oauthbearer.client.secret"));
        assert!(!is_secret_property("security.protocol"));
    }
}
