//! Where secrets come from besides the config file, resolved once at load, before
//! validation: every password has a `password_file` sibling (a mounted Kubernetes Secret or
//! Docker secret; the file's content without its trailing newline), sinks, which live in an
//! array the `CUTOVER__…` environment mapping cannot address, also read
//! `CUTOVER_SINK_<NAME>_PASSWORD`, and Kafka properties can be read from files
//! (`kafka.secret_files`, e.g. `sasl.password`, `ssl.key.password`).
//!
//! ```text
//!   password = "…"            in the file (or CUTOVER__SOURCE__PASSWORD etc. for the
//!                             sections the environment mapping reaches)
//!   password_file = "/run/…"  read here; setting both is an error naming the field
//!   CUTOVER_SINK_NEWSTORE_PASSWORD   sinks[name = "newstore"].password, wins over both
//! ```
//!
//! Errors name the field and the file, never the content.

use std::path::{Path, PathBuf};

use super::validate::{FieldError, ValidationErrors};
use super::{Config, Secret};

/// The environment variable of sink `name`'s password: `CUTOVER_SINK_<NAME>_PASSWORD`, the
/// name upper-cased with every character other than a letter or digit as `_`.
pub fn sink_password_var(name: &str) -> String {
    let n: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("CUTOVER_SINK_{n}_PASSWORD")
}

/// A secret file's content, without the trailing newline editors and `echo` add.
fn read_secret(field: &str, path: &Path) -> Result<String, FieldError> {
    let raw = std::fs::read_to_string(path).map_err(|e| FieldError {
        path: field.to_string(),
        rule: format!("cannot read {} ({e})", path.display()),
    })?;
    Ok(raw.trim_end_matches(['\n', '\r']).to_string())
}

/// `<field>.<key>_file` into `<field>.<key>` (`key`: `password` or `token`); both set is
/// an error naming the field.
fn resolve(
    errs: &mut ValidationErrors,
    field: &str,
    key: &str,
    value: &mut Option<Secret>,
    file: &Option<PathBuf>,
) {
    let Some(path) = file else { return };
    if value.is_some() {
        errs.0.push(FieldError {
            path: format!("{field}.{key}_file"),
            rule: format!("{field}.{key} is set too: set one of them"),
        });
        return;
    }
    match read_secret(&format!("{field}.{key}_file"), path) {
        Ok(v) => *value = Some(Secret::new(v)),
        Err(e) => errs.0.push(e),
    }
}

impl Config {
    /// Fill every password from its file or environment variable (see the module docs).
    pub(super) fn resolve_secrets(
        &mut self,
        env: &[(String, String)],
    ) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        resolve(
            &mut errs,
            "source",
            "password",
            &mut self.source.password,
            &self.source.password_file,
        );
        if let Some(b) = self.backsync.as_mut() {
            resolve(
                &mut errs,
                "backsync",
                "password",
                &mut b.password,
                &b.password_file,
            );
            resolve(
                &mut errs,
                "backsync",
                "legacy_password",
                &mut b.legacy_password,
                &b.legacy_password_file,
            );
        }
        resolve(
            &mut errs,
            "registry",
            "password",
            &mut self.registry.password,
            &self.registry.password_file,
        );
        resolve(
            &mut errs,
            "registry",
            "token",
            &mut self.registry.token,
            &self.registry.token_file,
        );
        let rs = &mut self.registry_server;
        resolve(
            &mut errs,
            "registry_server",
            "password",
            &mut rs.password,
            &rs.password_file,
        );
        resolve(
            &mut errs,
            "registry_server",
            "token",
            &mut rs.token,
            &rs.token_file,
        );
        for (i, s) in self.sinks.iter_mut().enumerate() {
            resolve(
                &mut errs,
                &format!("sinks[{i}]"),
                "password",
                &mut s.password,
                &s.password_file,
            );
            let var = sink_password_var(&s.name);
            if let Some((_, v)) = env.iter().find(|(k, _)| *k == var) {
                s.password = Some(Secret::new(v.clone()));
            }
        }
        for (property, path) in &self.kafka.secret_files {
            let field = format!("kafka.secret_files.{property:?}");
            if self.kafka.properties.contains_key(property) {
                errs.0.push(FieldError {
                    path: field,
                    rule: format!("kafka.properties sets {property:?} too: set one of them"),
                });
                continue;
            }
            match read_secret(&field, path) {
                Ok(v) => {
                    self.kafka.properties.0.insert(property.clone(), v);
                }
                Err(e) => errs.0.push(e),
            }
        }
        if errs.0.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}
