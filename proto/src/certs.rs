//! Certificates in and out of PEM text.

use anyhow::{Context, Result, bail};

/// The DER of every `CERTIFICATE` block in `text`, in order; an error if
/// there is none.
pub fn certs_from_pem(text: &[u8]) -> Result<Vec<Vec<u8>>> {
    let certs: Vec<Vec<u8>> = pem::parse_many(text)
        .context("not PEM")?
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .collect();
    if certs.is_empty() {
        bail!("no certificate in it");
    }
    Ok(certs)
}

/// A certificate as PEM.
pub fn cert_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}
