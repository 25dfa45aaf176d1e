//! The trust a destination adds to the built-in roots: its `ca_file`, read and checked once by
//! the config's validation (so `check` reports a bad file) and again when the destination's
//! HTTP client is built. Knows PEM and rustls's parsing, nothing of HTTP exchanges or config.

use crate::error::error_chain;

/// The CA certificates of the `ca_file` at `path` (PEM, one or more). The error names the key
/// and the file, and says why the file cannot serve and what to do.
pub fn ca_certificates(path: &str) -> Result<Vec<reqwest::Certificate>, String> {
    let fail = |why: String| format!("ca_file {path:?} {why}; fix the file or remove ca_file");
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot be read: {e}")))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        fail(format!(
            "is not a PEM file of certificates: {}",
            error_chain(&e)
        ))
    })?;
    if certificates.is_empty() {
        return Err(fail(
            "contains no certificate: expected one or more PEM blocks \
             \"-----BEGIN CERTIFICATE-----\" holding the CA that signed the upstream's \
             certificate"
                .into(),
        ));
    }
    // rustls parses a root only when a client is built with it: build one with these roots
    // alone, so a damaged certificate is reported here (and by `check`), not at start.
    let mut probe = reqwest::Client::builder().tls_built_in_root_certs(false);
    for certificate in &certificates {
        probe = probe.add_root_certificate(certificate.clone());
    }
    probe.build().map_err(|e| {
        fail(format!(
            "holds a certificate that cannot be used as a trusted root: {}",
            error_chain(&e)
        ))
    })?;
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_files_without_a_usable_certificate_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        std::fs::write(path("key.pem"), key_only).unwrap();
        let e = ca_certificates(&path("key.pem")).unwrap_err();
        let want = format!("ca_file {:?} contains no certificate", path("key.pem"));
        assert!(e.starts_with(&want), "{e}");
        assert!(e.ends_with("; fix the file or remove ca_file"), "{e}");
        let damaged = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        std::fs::write(path("damaged.pem"), damaged).unwrap();
        let e = ca_certificates(&path("damaged.pem")).unwrap_err();
        assert!(e.contains("cannot be used as a trusted root"), "{e}");
    }
}
