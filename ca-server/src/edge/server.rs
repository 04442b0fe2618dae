//! The HTTPS listener: TLS (rustls, ring) with its own timeouts, HTTP/1.1 and
//! HTTP/2 via hyper, the peer's address and client certificate attached to
//! every request, and a graceful shutdown.
//!
//! The TLS configuration sits behind [`TlsSource`] so that a new server
//! certificate (or later a new CRL) takes effect for new connections without
//! a restart.
//!
//! Slow and idle clients: the TLS handshake has its own deadline; a
//! connection with no request in flight for `header_timeout` is closed by a
//! per-connection watchdog (this covers what hyper's HTTP/1 header timeout
//! does not: the protocol sniffing before the first request and idle or
//! trickling HTTP/2 connections); request bodies have `body_timeout`.
//!
//! Many connections: at most `max_connections` in all and
//! `max_connections_per_address` per client address (the throttle's key:
//! an IPv4 address or an IPv6 prefix); more are closed at accept, before
//! TLS, and counted (`ca_connections_refused`). A connection from a trusted
//! PROXY-protocol peer is counted under the client address its header
//! names, once the header is read (still before TLS), since that is the
//! address throttling and the audit log use; the proxy's own address is
//! not limited. HTTP/2 limits keep one connection from making the server
//! hold much: [`H2_MAX_STREAMS`] concurrent streams, flow-control windows
//! sized to the 64 KiB body limit, and a header list bound.

use crate::edge::http::Peer;
use crate::edge::proxy_protocol::TrustedProxies;
use crate::issue::throttle::{Key, key_of};
use anyhow::{Context, Result};
use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Concurrent HTTP/2 streams per connection.
pub const H2_MAX_STREAMS: u32 = 32;
/// HTTP/2 stream window: one whole body (64 KiB) and a little more.
pub const H2_STREAM_WINDOW: u32 = 80 * 1024;
/// HTTP/2 connection window: a few bodies in flight at once.
pub const H2_CONNECTION_WINDOW: u32 = 256 * 1024;
/// Largest HTTP/2 header list (decoded) accepted.
pub const H2_MAX_HEADER_LIST: u32 = 16 * 1024;

/// Limits that keep slow or idle clients from holding the server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time allowed for the TLS handshake (a header timeout does not cover it).
    pub handshake_timeout: Duration,
    /// Time allowed for a request's headers, and for an idle keep-alive connection.
    pub header_timeout: Duration,
    /// Time allowed for a request body.
    pub body_timeout: Duration,
    /// Most connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Most connections open at once from one client address (or IPv6 prefix).
    pub max_connections_per_address: usize,
    /// IPv6 clients are counted per prefix of this length (as throttled).
    pub ipv6_prefix: u8,
    /// Proxies whose connections start with a PROXY header naming the client.
    pub proxies: Arc<TrustedProxies>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(15),
            body_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_address: 64,
            ipv6_prefix: 64,
            proxies: Arc::default(),
        }
    }
}

/// `serve` flags for [`Limits`] (defaults as in [`Limits::default`]).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Time allowed for a client's TLS handshake.
    #[arg(long, env = "CA_HANDSHAKE_TIMEOUT", default_value = "10s")]
    pub handshake_timeout: humantime::Duration,
    /// Time allowed for a request's headers; a connection idle this long is closed.
    #[arg(long, env = "CA_HEADER_TIMEOUT", default_value = "15s")]
    pub header_timeout: humantime::Duration,
    /// Time allowed for a request body (408 after it).
    #[arg(long, env = "CA_BODY_TIMEOUT", default_value = "10s")]
    pub body_timeout: humantime::Duration,
    /// Most connections open at once; further ones are closed at accept.
    #[arg(long, env = "CA_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Most connections open at once from one client address (an IPv6
    /// client: its prefix, as throttled); further ones are closed at accept.
    #[arg(long, env = "CA_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_address: u32,
    /// Load balancers (IPs or CIDR blocks, comma-separated) whose connections
    /// start with a PROXY protocol v1/v2 header (HAProxy `send-proxy-v2`):
    /// the header's source address is then the client's, for throttling and
    /// the audit log.
    #[arg(long, env = "CA_PROXY_PROTOCOL_FROM", value_delimiter = ',')]
    pub proxy_protocol_from: Vec<String>,
}

impl TryFrom<&LimitArgs> for Limits {
    type Error = anyhow::Error;
    fn try_from(a: &LimitArgs) -> Result<Limits> {
        Ok(Limits {
            handshake_timeout: a.handshake_timeout.into(),
            header_timeout: a.header_timeout.into(),
            body_timeout: a.body_timeout.into(),
            max_connections: a.max_connections as usize,
            max_connections_per_address: a.max_connections_per_address as usize,
            ipv6_prefix: Limits::default().ipv6_prefix,
            proxies: Arc::new(TrustedProxies::parse(&a.proxy_protocol_from)?),
        })
    }
}

/// Open connections per client address.
#[derive(Debug)]
struct PerAddress {
    max: usize,
    ipv6_prefix: u8,
    open: std::sync::Mutex<HashMap<Key, usize>>,
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
struct AddressSlot {
    table: Arc<PerAddress>,
    key: Key,
}

impl PerAddress {
    /// A slot for one more connection from `ip`, or `None` at the limit.
    fn acquire(self: &Arc<PerAddress>, ip: IpAddr) -> Option<AddressSlot> {
        let key = key_of(ip, self.ipv6_prefix);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self
            .table
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Logs and counts a connection closed for its address's limit.
fn refuse_per_address(addr: std::net::SocketAddr) {
    tracing::warn!(peer = %addr.ip(), "per-address connection limit reached; closing");
    crate::metrics::metrics().connection_refused("per_address");
}

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
struct Activity(std::sync::Mutex<(usize, Instant)>);

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity(std::sync::Mutex::new((0, Instant::now()))))
    }

    /// Marks a request in flight until the guard drops.
    fn begin(self: &Arc<Activity>) -> Busy {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0 += 1;
        Busy(self.clone())
    }

    /// When the connection will have been idle too long (`None` while busy).
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        let (in_flight, since) = *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (in_flight == 0).then(|| since + idle)
    }
}

#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self
            .0
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.0 -= 1;
        state.1 = Instant::now();
    }
}

/// Resolves once the connection has had no request in flight for `idle`.
async fn idle_watchdog(activity: Arc<Activity>, idle: Duration) {
    loop {
        match activity.idle_deadline(idle) {
            Some(deadline) if Instant::now() >= deadline => return,
            Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
            None => tokio::time::sleep(idle).await,
        }
    }
}

/// The current TLS server configuration, swappable at run time.
#[derive(Debug, Clone)]
pub struct TlsSource(Arc<RwLock<Arc<ServerConfig>>>);

impl TlsSource {
    pub fn new(config: ServerConfig) -> TlsSource {
        TlsSource(Arc::new(RwLock::new(Arc::new(config))))
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn replace(&self, config: ServerConfig) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
    }
}

/// Builds the server's rustls configuration: its own chain and key, and
/// optional client certificates verified against `client_roots` (requests
/// without one still get through; handlers that need one check [`Peer`]
/// against the store; see [`crate::edge::client_verifier`]).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: &[CertificateDer<'static>],
) -> Result<ServerConfig> {
    let provider = proto::trust::provider();
    let mut roots = rustls::RootCertStore::empty();
    for root in client_roots {
        roots
            .add(root.clone())
            .context("adding a client trust anchor")?;
    }
    let verifier =
        crate::edge::client_verifier::ClientVerifier::build(Arc::new(roots), provider.clone())?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("loading the server certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    config.ticketer = rustls::crypto::ring::Ticketer::new().context("creating the TLS ticketer")?;
    Ok(config)
}

/// Accepts connections on `listener` until `shutdown` resolves, then lets
/// open requests finish (at most 10 s).
pub async fn run(
    listener: TcpListener,
    tls: TlsSource,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .max_pending_accept_reset_streams(Some(32));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress {
        max: limits.max_connections_per_address,
        ipv6_prefix: limits.ipv6_prefix,
        open: std::sync::Mutex::new(HashMap::new()),
    });
    tokio::pin!(shutdown);

    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(peer = %addr, "connection limit reached; closing");
            crate::metrics::metrics().connection_refused("total");
            continue;
        };
        // A trusted proxy's connections are counted under the client its
        // PROXY header names, below.
        let proxied = limits.proxies.contains(addr.ip());
        let address_slot = if proxied {
            None
        } else {
            match per_address.acquire(addr.ip()) {
                Some(s) => Some(s),
                None => {
                    refuse_per_address(addr);
                    continue;
                }
            }
        };
        let per_address = per_address.clone();
        let acceptor = TlsAcceptor::from(tls.current());
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut _address_slot = address_slot;
            let _ = tcp.set_nodelay(true);
            let mut tcp = tcp;
            let mut addr = addr;
            if proxied {
                let header = tokio::time::timeout(
                    limits.handshake_timeout,
                    crate::edge::proxy_protocol::read_header(&mut tcp),
                )
                .await;
                match header {
                    Ok(Ok(Some(client))) => addr = client,
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(proxy = %addr, error = %e, "refused a connection from a PROXY-protocol peer");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(proxy = %addr, "PROXY header timed out");
                        return;
                    }
                }
                match per_address.acquire(addr.ip()) {
                    Some(s) => _address_slot = Some(s),
                    None => {
                        refuse_per_address(addr);
                        return;
                    }
                }
            }
            let stream =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %addr, "TLS handshake timed out");
                        return;
                    }
                };
            let client_chain = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| Arc::new(certs.iter().map(|c| c.clone().into_owned()).collect()));
            let peer = Peer { addr, client_chain };
            let activity = Activity::new();
            let busy = activity.clone();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(peer.clone());
                let guard = busy.begin();
                let app = app.clone();
                async move {
                    let resp = app.oneshot(req.map(Body::new)).await;
                    drop(guard);
                    resp
                }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            tokio::select! {
                result = watcher.watch(conn) => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %addr, error = %e, "connection ended with an error");
                    }
                }
                // Dropping the connection closes it; nothing is in flight.
                _ = idle_watchdog(activity, limits.header_timeout) => {
                    tracing::debug!(peer = %addr, "closing an idle connection");
                }
            }
        });
    }

    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("gave up waiting for connections to close"),
    }
    Ok(())
}
