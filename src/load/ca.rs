//! `--ca-file`: extra certificate authorities for an HTTPS edge (a proxy
//! terminating TLS with a self-signed or private certificate), trusted on
//! top of the system's roots. Certificates are always verified: a file
//! that cannot be read, or holds no PEM certificate, stops the run before
//! its first request, naming the file.

use anyhow::Context;
use std::path::Path;

/// The certificates of the PEM file at `path` (one or more
/// `-----BEGIN CERTIFICATE-----` blocks).
pub fn read(path: &Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("--ca-file {}: cannot read it", path.display()))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("--ca-file {}: not a PEM certificate file", path.display()))?;
    anyhow::ensure!(
        !certificates.is_empty(),
        "--ca-file {}: no PEM certificate in it (expected -----BEGIN CERTIFICATE----- blocks)",
        path.display()
    );
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, contents: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ordersys-ca-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn certificate() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn reads_every_certificate_of_a_bundle() {
        let path = temp("bundle.pem", (certificate() + &certificate()).as_bytes());
        assert_eq!(read(&path).unwrap().len(), 2);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_missing_or_non_pem_file_is_an_error_naming_it() {
        let missing = Path::new("/nonexistent/edge-ca.pem");
        let err = format!("{:#}", read(missing).unwrap_err());
        assert!(
            err.contains("/nonexistent/edge-ca.pem") && err.contains("cannot read"),
            "{err}"
        );
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        for (name, contents) in [
            ("empty.pem", Vec::new()),
            ("text.pem", b"not a certificate\n".to_vec()),
            ("key.pem", key.into_bytes()),
            (
                "garbled.pem",
                b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n".to_vec(),
            ),
        ] {
            let path = temp(name, &contents);
            let err = format!("{:#}", read(&path).unwrap_err());
            assert!(err.contains(&path.display().to_string()), "{name}: {err}");
            assert!(err.contains("PEM certificate"), "{name}: {err}");
            std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        }
    }
}
