//! `ca-server serve`: initialise on first start, open the store, load the
//! intermediate, issue the server's own TLS certificate, and serve the API
//! until SIGTERM/SIGINT. Background tasks sweep expired PSKs and renew the
//! server certificate.

use crate::clock::{Clock, SystemClock};
use crate::edge::http::{self, AppState};
use crate::edge::server::{self, Limits, TlsSource};
use crate::issue::sign::Authority;
use crate::issue::throttle::{Throttle, ThrottleConfig};
use crate::pki::ca::{self, CaPaths, LeafRequest, Signer};
use crate::pki::crl::{CrlConfig, CrlService};
use crate::store::{AuditEvent, Store};
use crate::store::{CertKind, Event, Outcome};
use anyhow::{Context, Result, bail};
use policy::{AllowedName, KeyKind, Profile};
use rcgen::{KeyPair, PublicKeyData};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Everything `serve` needs, after flags and environment are resolved.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where the CA keys are (files in the data dir, or a PKCS#11 token).
    pub keys: ca::KeySource,
    pub data_dir: std::path::PathBuf,
    pub database_url: String,
    pub listen: SocketAddr,
    pub hostnames: Vec<String>,
    pub public_url: Option<String>,
    pub validity: Duration,
    /// How long after expiry a host's current certificate may still renew.
    pub renew_grace: Duration,
    pub name: String,
    pub limits: Limits,
    pub crl: CrlConfig,
    pub throttle: ThrottleConfig,
    /// How often counted repeated refusals are written (rejection_log.rs).
    pub audit_flush_interval: Duration,
    /// Audit checkpoints and the export sinks (store/audit_sink.rs).
    pub audit_trail: crate::store::audit_sink::AuditTrailArgs,
    /// The plain-HTTP listener (CRLs, CA certificates, OCSP), if any.
    pub http_listen: Option<SocketAddr>,
    pub http_public_url: Option<String>,
    pub ocsp: crate::pki::responder::OcspConfig,
}

/// An `http://` URL with a host and no path, query or fragment (paths are
/// appended to it and the result is written into certificates).
pub fn check_http_public_url(url: &str) -> Result<String> {
    let trimmed = url.trim_end_matches('/');
    let Some(rest) = trimmed.strip_prefix("http://") else {
        bail!(
            "--http-public-url must start with http:// (relying parties fetch OCSP and CRLs without TLS)"
        );
    };
    if rest.is_empty()
        || rest.contains(['/', '?', '#', '@'])
        || !rest.chars().all(|c| c.is_ascii_graphic())
    {
        bail!("--http-public-url must be http://HOST[:PORT] with no path, query or credentials");
    }
    Ok(trimmed.to_owned())
}

/// The plain-HTTP public URL: `http://<first DNS name>:<port>` unless given.
pub fn default_http_public_url(names: &[AllowedName], listen: SocketAddr) -> String {
    default_public_url(names, listen).replacen("https://", "http://", 1)
}

/// The default of `serve --renew-grace`: 14 days, in seconds.
pub const DEFAULT_RENEW_GRACE_SECS: i64 = 14 * 86_400;

/// The names the server's certificate covers: `--hostname` values, or the
/// machine's hostname and `localhost`.
pub fn server_names(given: &[String]) -> Result<Vec<AllowedName>> {
    let mut names = Vec::new();
    let candidates: Vec<String> = if given.is_empty() {
        let mut v = Vec::new();
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            v.push(h.trim().to_ascii_lowercase());
        }
        v.push("localhost".into());
        v
    } else {
        given.to_vec()
    };
    for c in candidates {
        match AllowedName::parse(&c) {
            Ok(n) if !names.contains(&n) => names.push(n),
            Ok(_) => {}
            Err(e) if given.is_empty() => {
                tracing::warn!(name = %policy::hostname::escape_for_display(&c), error = %e, "skipping the machine hostname for the server certificate")
            }
            Err(e) => bail!(
                "--hostname {}: {e}",
                policy::hostname::escape_for_display(&c)
            ),
        }
    }
    if !names.iter().any(|n| matches!(n, AllowedName::Dns(_))) {
        bail!("the server certificate needs at least one DNS name (--hostname)");
    }
    Ok(names)
}

/// The URL clients use, for the CRL distribution point and spawner hints.
pub fn default_public_url(names: &[AllowedName], listen: SocketAddr) -> String {
    let host = names
        .iter()
        .find_map(|n| match n {
            AllowedName::Dns(d) => Some(d.clone()),
            AllowedName::Ip(_) => None,
        })
        .unwrap_or_else(|| "localhost".into());
    format!("https://{host}:{}", listen.port())
}

/// The CA's own names: its certificate's and its public URL's host.
pub fn reserved_names(names: &[AllowedName], public_url: &str) -> policy::ReservedNames {
    let mut reserved =
        policy::ReservedNames::from_text(policy::ReservedNames::url_host(public_url));
    for n in names {
        reserved.insert(n.clone());
    }
    reserved
}

/// The server's own certificate and key, issued from the intermediate.
struct ServerCert {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    not_before: i64,
    not_after: i64,
}

async fn issue_server_cert(
    signer: &Signer,
    store: &Store,
    names: &[AllowedName],
    now: i64,
    validity: Duration,
) -> Result<ServerCert> {
    let mut key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let spki = key.subject_public_key_info();
    let hostname = names
        .iter()
        .find_map(|n| match n {
            AllowedName::Dns(d) => Some(d.clone()),
            AllowedName::Ip(_) => None,
        })
        .expect("server_names guarantees a DNS name");
    let profile = Profile {
        hostname: hostname.clone(),
        sans: names.to_vec(),
    };
    let leaf = signer.sign_leaf(&LeafRequest {
        profile: &profile,
        key: KeyKind::EcdsaP256,
        spki_der: &spki,
        now,
        validity,
    })?;
    let record = leaf.to_record(&hostname, CertKind::Server, &spki, now);
    store
        .record_certificate(
            &record,
            &AuditEvent {
                at: now,
                event: Event::ServerCertIssued.into(),
                hostname: Some(hostname),
                serial: Some(leaf.serial.clone()),
                outcome: Outcome::Issued.into(),
                actor: Some("ca-server".into()),
                ..Default::default()
            },
        )
        .await
        .context("recording the server certificate")?;
    Ok(ServerCert {
        chain: vec![
            CertificateDer::from(leaf.der),
            CertificateDer::from(signer.intermediate_der.clone()),
        ],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from({
            // rcgen does not wipe on drop: take the DER, then wipe the key pair.
            let der = key.serialize_der();
            zeroize::Zeroize::zeroize(&mut key);
            der
        })),
        not_before: leaf.not_before,
        not_after: leaf.not_after,
    })
}

/// Runs the server until a shutdown signal.
pub async fn serve(opts: ServeOptions) -> Result<()> {
    crate::edge::hardening::disable_core_dumps();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let paths = CaPaths::with_keys(&opts.data_dir, opts.keys.clone());
    let names = server_names(&opts.hostnames)?;
    // Bound before init, so that a first start's intermediate can name the
    // root CRL at the plain-HTTP URL with its real port.
    let http_listener = match opts.http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr} (--http-listen)"))?,
        ),
        None => None,
    };
    let http_urls = match &http_listener {
        Some(l) => {
            let url = match &opts.http_public_url {
                Some(u) => check_http_public_url(u)?,
                None => default_http_public_url(&names, l.local_addr()?),
            };
            Some(ca::PlainHttpUrls::new(&url))
        }
        None => None,
    };
    let init = ca::init_with(
        &paths,
        &opts.name,
        clock.now(),
        http_urls.as_ref().map(|u| u.root_crl.as_str()),
    )?;
    if init.created {
        tracing::info!(fingerprint = %init.fingerprint, "initialised a new CA");
    }

    // Bound first, so the default public URL (and the CRL distribution point
    // in every leaf) carries the real port even with `--listen ...:0`.
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    let bound = listener.local_addr()?;
    let public_url = opts
        .public_url
        .clone()
        .unwrap_or_else(|| default_public_url(&names, bound));
    let mut signer = Signer::load(&paths, Some(ca::crl_url_for(&public_url)))?;
    if let Some(urls) = http_urls.clone() {
        signer = signer.with_plain_http(urls);
    }
    let signer = Arc::new(signer);
    let store = Store::open(&opts.database_url).await?;
    store
        .check_ca_identity(&signer.fingerprint, &signer.intermediate_der)
        .await?;
    // The PSK seal key (ACME's EAB): created beside the CA keys if missing,
    // and the one the store's PSKs are sealed under.
    crate::pki::psk_seal::install(&opts.data_dir, &store, true).await?;
    // One durable commit per batch of waiting issuances (store/writer.rs),
    // one query per batch of waiting PSK lookups (store/reader.rs).
    store.start_group_commit();
    store.start_batched_reads();
    // The audit key (checkpoints of the audit chain), shared by every replica.
    let audit_key: Arc<dyn crate::pki::audit_key::CheckpointSigner> =
        crate::pki::audit_key::install(&opts.data_dir, opts.keys.token(), &store)
            .await?
            .into();
    let exporter = crate::store::audit_sink::Exporter::start(&store, &opts.audit_trail).await?;

    let cert = issue_server_cert(&signer, &store, &names, clock.now(), opts.validity).await?;
    let client_roots = vec![CertificateDer::from(signer.root_der.clone())];
    let tls = TlsSource::new(server::server_config(cert.chain, cert.key, &client_roots)?);

    let authority = Arc::new(Authority {
        store: store.clone(),
        signer: signer.clone(),
        clock: clock.clone(),
        validity: opts.validity,
        renew_grace: i64::try_from(opts.renew_grace.as_secs()).unwrap_or(i64::MAX / 2),
        throttle: Throttle::new(opts.throttle),
        rejections: crate::issue::rejection_log::RejectionLog::new(
            crate::issue::rejection_log::DEFAULT_WINDOW_SECS,
            opts.audit_flush_interval,
        ),
        disk: crate::store::sqlite_path(&opts.database_url).map(|db| {
            let dir = db
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            crate::diskguard::DiskGuard::new(dir, crate::diskguard::MIN_FREE_BYTES)
        }),
    });
    // The first CRLs are signed before listening, so none is ever missing.
    let crl = Arc::new(CrlService::new(
        &paths,
        store.clone(),
        signer.clone(),
        clock.clone(),
        opts.crl,
    )?);
    crl.regenerate().await.context("signing the first CRLs")?;
    let flusher = tokio::spawn({
        let authority = authority.clone();
        async move {
            authority
                .rejections
                .run_flusher(authority.store.clone())
                .await
        }
    });
    let plain_http = match http_listener {
        Some(listener) => {
            let responder = crate::pki::responder::Responder::start(
                store.clone(),
                signer.clone(),
                clock.clone(),
                opts.ocsp,
                crl.revocations(),
            )
            .await
            .context("starting the OCSP responder")?;
            let app = crate::edge::plain_http::router(crate::edge::plain_http::PlainState {
                crl: crl.clone(),
                signer: signer.clone(),
                responder: responder.clone(),
                clock: clock.clone(),
                body_timeout: opts.limits.body_timeout,
            });
            tracing::info!(
                addr = %listener.local_addr()?,
                public_url = ?http_urls.as_ref().map(|u| u.ocsp.trim_end_matches("/ocsp")),
                "plain HTTP listener up (CRLs, CA certificates, OCSP)"
            );
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(crate::edge::plain_http::run(
                listener,
                app,
                opts.limits.clone(),
                async move {
                    let _ = stop_rx.await;
                },
            ));
            Some((server, stop_tx, tokio::spawn(responder.run())))
        }
        None => None,
    };
    let app = http::router(AppState {
        authority: authority.clone(),
        store: store.clone(),
        crl: crl.clone(),
        body_timeout: opts.limits.body_timeout,
        public_url: public_url.clone(),
        reserved: Arc::new({
            let mut reserved = reserved_names(&names, &public_url);
            // The plain-HTTP URL's host is the CA's too (leaves name it in AIA and CDP).
            if let Some(host) = http_urls
                .as_ref()
                .and_then(|u| policy::ReservedNames::url_host(&u.ocsp))
            {
                for name in policy::ReservedNames::from_text([host]).names() {
                    reserved.insert(name.clone());
                }
            }
            reserved
        }),
    });

    tracing::info!(
        addr = %bound,
        fingerprint = %signer.fingerprint,
        public_url = %public_url,
        store = %crate::store::redact_url(&opts.database_url),
        "listening"
    );

    // While the database is unreachable, requests fail fast with 503 and
    // /healthz says so; issuance resumes when it is back (store::availability).
    let watcher = tokio::spawn(store.clone().watch_availability());
    let sweeper = tokio::spawn(sweep_expired(store.clone(), clock.clone()));
    let crl_refresher = tokio::spawn(crl.run());
    let checkpointer = {
        let interval: Duration = opts.audit_trail.audit_checkpoint_interval.into();
        (!interval.is_zero()).then(|| {
            tokio::spawn(crate::admin::audit::run_checkpoints(
                store.clone(),
                audit_key.clone(),
                clock.clone(),
                interval,
            ))
        })
    };
    let renewer = tokio::spawn(renew_server_cert(
        signer.clone(),
        store.clone(),
        clock.clone(),
        tls.clone(),
        names,
        client_roots,
        opts.validity,
        (cert.not_before, cert.not_after),
    ));

    server::run(listener, tls, app, opts.limits, shutdown_signal()).await?;
    if let Some((server, stop, renewer)) = plain_http {
        let _ = stop.send(());
        let _ = server.await;
        renewer.abort();
    }
    watcher.abort();
    sweeper.abort();
    crl_refresher.abort();
    renewer.abort();
    flusher.abort();
    // Refusals counted since the last flush are written before the store closes.
    if let Err(e) = authority.rejections.flush(&store).await {
        tracing::warn!(error = %e, "writing the last counted refusals failed");
    }
    // A last checkpoint covers everything this server wrote; the sinks get
    // every committed row before the store closes.
    if let Some(task) = checkpointer {
        task.abort();
        if let Err(e) =
            crate::admin::audit::checkpoint(&store, audit_key.as_ref(), clock.now(), true).await
        {
            tracing::warn!(error = %e, "writing the last audit checkpoint failed");
        }
    }
    if let Some(exporter) = exporter {
        exporter.stop().await;
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Deletes expired PSKs every minute (they are refused anyway; this keeps
/// the table small and the audit log complete).
async fn sweep_expired(store: Store, clock: Arc<dyn Clock>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        match store.sweep_expired_psks(clock.now()).await {
            Ok(hosts) if !hosts.is_empty() => {
                tracing::info!(count = hosts.len(), "swept expired PSKs")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweeping expired PSKs failed"),
        }
    }
}

/// Re-issues the server's own certificate once two thirds of its lifetime
/// have passed, and swaps it in for new connections.
#[allow(clippy::too_many_arguments)]
async fn renew_server_cert(
    signer: Arc<Signer>,
    store: Store,
    clock: Arc<dyn Clock>,
    tls: TlsSource,
    names: Vec<AllowedName>,
    client_roots: Vec<CertificateDer<'static>>,
    validity: Duration,
    mut current: (i64, i64),
) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let (nb, na) = current;
        if clock.now() < nb + (na - nb) * 2 / 3 {
            continue;
        }
        let result = async {
            let cert = issue_server_cert(&signer, &store, &names, clock.now(), validity).await?;
            let window = (cert.not_before, cert.not_after);
            tls.replace(server::server_config(cert.chain, cert.key, &client_roots)?);
            anyhow::Ok(window)
        }
        .await;
        match result {
            Ok(window) => {
                current = window;
                tracing::info!("renewed the server certificate");
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "renewing the server certificate failed; will retry")
            }
        }
    }
}
