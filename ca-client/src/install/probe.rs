//! Asks a running service which certificate it serves: a TLS handshake to
//! its address (for PostgreSQL after the `SSLRequest` preamble), recording
//! the leaf it presents. Nothing is sent after the handshake; the handshake
//! signatures are still checked, so the answer proves the service holds the
//! key of the certificate it shows.

use crate::trust;
use anyhow::{Context, Result, anyhow, bail};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where and how to reach a service's TLS endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// `host:port`.
    pub addr: String,
    /// Send PostgreSQL's `SSLRequest` first.
    pub postgres: bool,
}

/// PostgreSQL's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

impl Probe {
    /// The DER of the leaf the service presents for `sni`.
    pub async fn served_leaf(&self, sni: &str) -> Result<Vec<u8>> {
        tokio::time::timeout(ATTEMPT_TIMEOUT, self.handshake(sni))
            .await
            .map_err(|_| anyhow!("{} did not finish a TLS handshake in time", self.addr))?
    }

    async fn handshake(&self, sni: &str) -> Result<Vec<u8>> {
        let mut tcp = TcpStream::connect(&self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        if self.postgres {
            tcp.write_all(&SSL_REQUEST).await?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer)
                .await
                .with_context(|| format!("reading the SSLRequest answer of {}", self.addr))?;
            if answer[0] != b'S' {
                bail!(
                    "PostgreSQL at {} does not offer TLS (is ssl = on, i.e. the snippet included?)",
                    self.addr
                );
            }
        }
        let (config, seen) = trust::observing_client_config()?;
        let name = ServerName::try_from(sni.to_owned())?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        // The handshake may fail after the server's certificate (e.g. the
        // service then requires a client certificate): what we want is seen by then.
        let outcome = connector.connect(name, tcp).await;
        let leaf = seen.lock().ok().and_then(|s| s.clone());
        match (leaf, outcome) {
            (Some(leaf), _) => Ok(leaf.to_vec()),
            (None, Err(e)) => Err(anyhow!(e).context(format!("TLS handshake with {}", self.addr))),
            (None, Ok(_)) => bail!("{} presented no certificate", self.addr),
        }
    }

    /// Polls until the service presents `want` (the service may still be
    /// reloading), or `timeout` passes; the error names what it served instead.
    pub async fn wait_for_leaf(&self, sni: &str, want: &[u8], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.served_leaf(sni).await {
                Ok(leaf) if leaf == want => return Ok(()),
                Ok(leaf) => format!("it still serves serial {}", serial_of(&leaf)),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "the service at {} did not present the new certificate within {}: {last}",
                    self.addr,
                    humantime::format_duration(timeout)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Lowercase hex serial of a certificate, or `?`.
pub fn serial_of(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| hex::encode(c.raw_serial()))
        .unwrap_or_else(|_| "?".into())
}
