//! Which certificate authorities a TLS client trusts when it is given a CA file: only those
//! (the platform's roots are switched off). Shared by PostgreSQL's SQL connections
//! (`sslrootcert`, see `database::tls`) and the schema registry client (`registry.ca_file`).
//! A leaf: it knows files and native-tls, nothing of cutover.

use std::path::Path;

/// Trust exactly the CAs in the PEM file `path` (named `what` in errors, e.g.
/// `registry.ca_file` or `source.url: sslrootcert`).
pub fn only_roots_from(
    b: &mut native_tls::TlsConnectorBuilder,
    what: &str,
    path: &Path,
) -> Result<(), String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("{what} {}: cannot read it ({e})", path.display()))?;
    let certs = native_tls::Certificate::stack_from_pem(&pem)
        .map_err(|e| format!("{what} {}: not PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no certificate in the file",
            path.display()
        ));
    }
    b.disable_built_in_roots(true);
    for c in certs {
        b.add_root_certificate(c);
    }
    Ok(())
}
