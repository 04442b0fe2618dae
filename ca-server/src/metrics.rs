//! Prometheus metrics: what `GET /metrics` serves (OpenMetrics text, encoded
//! by the `prometheus-client` crate).
//!
//! Two kinds:
//! - counters and histograms updated where things happen (atomic adds, no
//!   lock on the hot path beyond a label lookup): requests and their latency,
//!   issued and replayed certificates, rejections by their public error code,
//!   store errors;
//! - gauges computed when scraped: live PSKs and expiring hosts (two cheap
//!   store queries, cached for [`STORE_STATS_TTL`]), seconds until the root,
//!   the intermediate and the served CRL expire, whether the store is up.
//!
//! The registry is process-wide ([`metrics`]): one `ca-server serve` per
//! process. Labels take values from fixed sets only: route templates (never
//! the requested path), status codes, error codes. No hostname, no PSK.
//! PSK refusals are counted under their public code `psk_rejected` only: a
//! precise reason (unknown host, wrong, used, expired) on an endpoint anyone
//! can read would tell an attacker which hostnames have a live PSK, which
//! the single 403 exists to hide. The audit log keeps the precise reason.

use crate::clock::Clock;
use crate::pki::ca::Signer;
use crate::pki::crl::CrlService;
use crate::store::{Store, StoreStats};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// How long store-derived gauges are reused between scrapes.
pub const STORE_STATS_TTL: Duration = Duration::from_secs(5);

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Routes whose 4xx answers count as refused signing requests.
const SIGNING_ROUTES: &[&str] = &[
    "/v1/sign",
    "/v1/renew",
    "/puppet-ca/v1/certificate_request/{name}",
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The route template (`/puppet-ca/v1/certificate/{name}`), or `unmatched`.
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcmeLabels {
    /// The ACME route template (`/acme/new-order`).
    route: String,
    /// `ok`, `created`, `issued`, ... or the ACME error type (`badNonce`).
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WithinLabel {
    within: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OcspLabel {
    status: &'static str,
}

/// Reads the oldest cached OCSP response's producedAt (see `pki::responder`).
pub struct OcspOldest(pub Box<dyn Fn() -> Option<i64> + Send + Sync>);

impl std::fmt::Debug for OcspOldest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OcspOldest(..)")
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the server exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: HistogramFamily<RequestLabels>,
    issued: Family<RouteLabel, Counter>,
    replayed: Family<RouteLabel, Counter>,
    rejections: Family<ReasonLabel, Counter>,
    acme: Family<AcmeLabels, Counter>,
    store_errors: Family<KindLabel, Counter>,
    refusal_audit_writes: Counter,
    issuance_batches: Family<KindLabel, Counter>,
    log_lines_dropped: Counter,
    audit_export_dropped: Family<KindLabel, Counter>,
    connections_refused: Family<ReasonLabel, Counter>,
    live_psks: Gauge,
    expiring: Family<WithinLabel, Gauge>,
    expired_within_grace: Gauge,
    expired_beyond_grace: Gauge,
    root_expiry: Gauge,
    intermediate_expiry: Gauge,
    crl_expiry: Gauge,
    crl_revoked: Gauge,
    store_up: Gauge,
    ocsp_requests: Family<OcspLabel, Counter>,
    ocsp_oldest_age: Gauge,
    ocsp_signatures: Counter,
    ocsp_oldest: std::sync::Mutex<Option<OcspOldest>>,
    /// Store-derived values and when they were read; one scrape at a time refreshes.
    cache: tokio::sync::Mutex<Option<(Instant, StoreStats)>>,
}

/// Request latency buckets: 0.5 ms to ~15 s (signing is ~1 ms, a store
/// round trip a few, a PostgreSQL outage up to the 5 s pool timeout).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ca");
        let requests: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(latency_histogram);
        let m = Metrics {
            requests,
            issued: Family::default(),
            replayed: Family::default(),
            rejections: Family::default(),
            acme: Family::default(),
            store_errors: Family::default(),
            refusal_audit_writes: Counter::default(),
            issuance_batches: Family::default(),
            log_lines_dropped: Counter::default(),
            audit_export_dropped: Family::default(),
            connections_refused: Family::default(),
            live_psks: Gauge::default(),
            expiring: Family::default(),
            expired_within_grace: Gauge::default(),
            expired_beyond_grace: Gauge::default(),
            root_expiry: Gauge::default(),
            intermediate_expiry: Gauge::default(),
            crl_expiry: Gauge::default(),
            crl_revoked: Gauge::default(),
            store_up: Gauge::default(),
            ocsp_requests: Family::default(),
            ocsp_oldest_age: Gauge::default(),
            ocsp_signatures: Counter::default(),
            ocsp_oldest: std::sync::Mutex::new(None),
            cache: tokio::sync::Mutex::new(None),
            registry: Registry::default(),
        };
        registry.register_with_unit(
            "http_request_duration",
            "Time to answer an HTTP request, by route template and status",
            prometheus_client::registry::Unit::Seconds,
            m.requests.clone(),
        );
        registry.register(
            "certificates_issued",
            "Certificates newly issued against a PSK",
            m.issued.clone(),
        );
        registry.register(
            "certificates_replayed",
            "Idempotent retries answered with the certificate already issued",
            m.replayed.clone(),
        );
        registry.register(
            "sign_rejections",
            "Refused signing requests by error code (PSK failures are all psk_rejected; \
             the audit log has the precise reason)",
            m.rejections.clone(),
        );
        registry.register(
            "acme_requests",
            "ACME requests by route template and outcome (the ACME error type when refused)",
            m.acme.clone(),
        );
        registry.register(
            "store_errors",
            "Store operations that failed: database errors, or refused while the store was down",
            m.store_errors.clone(),
        );
        registry.register(
            "refusal_audit_writes",
            "Store writes made by the refusal audit log (first rows of a window, \
             and flushes of counted repeats)",
            m.refusal_audit_writes.clone(),
        );
        registry.register(
            "issuance_batches",
            "Group-commit batches of PSK issuances, by who ran them: the writer \
             (`writer`), or a request that found it idle and committed alone (`inline`)",
            m.issuance_batches.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log writer's queue was full (stderr not \
             read fast enough); the audit rows in the store are unaffected",
            m.log_lines_dropped.clone(),
        );
        registry.register(
            "audit_export_dropped",
            "Audit rows a sink (--audit-file, --audit-syslog) could not take because its \
             queue was full or it failed; the store still holds them (the file gets a gap marker)",
            m.audit_export_dropped.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at accept: per_address (--max-connections-per-address) \
             or total (--max-connections)",
            m.connections_refused.clone(),
        );
        for (name, help, gauge) in [
            (
                "store_up",
                "1 while the store answers, 0 while it is unreachable",
                &m.store_up,
            ),
            ("psks_live", "PSKs not yet used or expired", &m.live_psks),
            (
                "hosts_expired_within_grace",
                "Hosts whose current certificate expired without renewal, less than \
                 the renewal grace ago (they can still renew)",
                &m.expired_within_grace,
            ),
            (
                "hosts_expired_beyond_grace",
                "Hosts whose current certificate expired without renewal longer than \
                 the renewal grace ago (they need a new PSK; `cert list --stale`)",
                &m.expired_beyond_grace,
            ),
            (
                "crl_revoked",
                "Certificates listed on the current CRL",
                &m.crl_revoked,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "certificates_expiring",
            "Hosts whose newest valid certificate expires within the window",
            m.expiring.clone(),
        );
        for (name, help, gauge) in [
            (
                "root_expiry",
                "Seconds until the root CA certificate expires",
                &m.root_expiry,
            ),
            (
                "intermediate_expiry",
                "Seconds until the intermediate CA certificate (the signer) expires",
                &m.intermediate_expiry,
            ),
            (
                "crl_expiry",
                "Seconds until the CRL served at /v1/crl expires (0: none to serve)",
                &m.crl_expiry,
            ),
        ] {
            registry.register_with_unit(
                name,
                help,
                prometheus_client::registry::Unit::Seconds,
                gauge.clone(),
            );
        }
        registry.register(
            "ocsp_requests",
            "OCSP requests answered, by certificate status (good, revoked, unknown) or \
             OCSP error status (malformedRequest, unauthorized, tryLater, internalError)",
            m.ocsp_requests.clone(),
        );
        registry.register(
            "ocsp_signatures",
            "OCSP responses signed (a response served from the cache costs none)",
            m.ocsp_signatures.clone(),
        );
        registry.register_with_unit(
            "ocsp_oldest_response_age",
            "Age of the oldest cached OCSP response (0: none cached)",
            prometheus_client::registry::Unit::Seconds,
            m.ocsp_oldest_age.clone(),
        );
        for status in [
            "good",
            "revoked",
            "unknown",
            "malformedRequest",
            "unauthorized",
            "tryLater",
            "internalError",
        ] {
            m.ocsp_requests.get_or_create_owned(&OcspLabel { status });
        }
        registry.register(
            "build",
            "The running ca-server version",
            Info::new(VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        // Series that alerts watch exist from the start (at 0), so a first
        // increase is a change, not a new series.
        for route in ["/v1/sign", "/puppet-ca/v1/certificate_request/{name}"] {
            let label = RouteLabel {
                route: route.to_owned(),
            };
            m.issued.get_or_create_owned(&label);
            m.replayed.get_or_create_owned(&label);
        }
        m.rejections.get_or_create_owned(&ReasonLabel {
            reason: "psk_rejected",
        });
        for reason in ["per_address", "total"] {
            m.connections_refused
                .get_or_create_owned(&ReasonLabel { reason });
        }
        for kind in ["database", "down"] {
            m.store_errors.get_or_create_owned(&KindLabel { kind });
        }
        for kind in ["writer", "inline"] {
            m.issuance_batches.get_or_create_owned(&KindLabel { kind });
        }
        Metrics { registry, ..m }
    }

    /// Records one answered request (called by the request-log middleware).
    /// `route` is the matched route template, `outcome` the decision code.
    pub fn observe_request(
        &self,
        route: Option<&str>,
        status: u16,
        outcome: &'static str,
        elapsed: Duration,
    ) {
        let route = route.unwrap_or("unmatched");
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                status,
            })
            .observe(elapsed.as_secs_f64());
        if route.starts_with("/acme/") {
            self.acme
                .get_or_create(&AcmeLabels {
                    route: route.to_owned(),
                    outcome: if outcome.is_empty() { "none" } else { outcome },
                })
                .inc();
        }
        match outcome {
            "issued" => {
                self.issued
                    .get_or_create(&RouteLabel {
                        route: route.to_owned(),
                    })
                    .inc();
            }
            "replayed" => {
                self.replayed
                    .get_or_create(&RouteLabel {
                        route: route.to_owned(),
                    })
                    .inc();
            }
            code if (400..500).contains(&status) && SIGNING_ROUTES.contains(&route) => {
                self.rejections
                    .get_or_create(&ReasonLabel { reason: code })
                    .inc();
            }
            _ => {}
        }
    }

    /// Counts a failed store operation: `database` (the database returned an
    /// error or could not be reached) or `down` (refused at once while the
    /// availability watcher sees the database down).
    pub fn store_error(&self, kind: &'static str) {
        self.store_errors.get_or_create(&KindLabel { kind }).inc();
    }

    /// Counts audit rows an export sink (`file`, `syslog`) dropped.
    pub fn audit_export_dropped(&self, sink: &'static str, n: u64) {
        self.audit_export_dropped
            .get_or_create(&KindLabel { kind: sink })
            .inc_by(n);
    }

    /// Counts a log line the log writer's full queue dropped.
    pub fn log_line_dropped(&self) {
        self.log_lines_dropped.inc();
    }

    /// Counts one store write of the refusal audit log.
    pub fn refusal_audit_write(&self) {
        self.refusal_audit_writes.inc();
    }

    /// Counts a group-commit batch by who ran it: `writer` or `inline`.
    pub fn issuance_batch(&self, by: &'static str) {
        self.issuance_batches
            .get_or_create(&KindLabel { kind: by })
            .inc();
    }

    /// Counts a connection closed at accept: `per_address` or `total`.
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts one OCSP answer by status.
    pub fn ocsp_request(&self, status: &'static str) {
        self.ocsp_requests
            .get_or_create(&OcspLabel { status })
            .inc();
    }

    /// Counts one OCSP signature.
    pub fn ocsp_signature(&self) {
        self.ocsp_signatures.inc();
    }

    /// Sets how the scrape reads the oldest cached OCSP response's time.
    pub fn set_ocsp_oldest(&self, source: OcspOldest) {
        *self
            .ocsp_oldest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(source);
    }

    /// Refreshes the scrape-time gauges and encodes everything.
    pub async fn render(&self, source: &ScrapeSource<'_>) -> String {
        let now = source.clock.now();
        self.store_up.set(i64::from(source.store.is_up()));
        {
            let mut cache = self.cache.lock().await;
            let fresh = cache
                .as_ref()
                .is_some_and(|(at, _)| at.elapsed() < STORE_STATS_TTL);
            if !fresh {
                match source.store.stats(now, source.renew_grace).await {
                    Ok(stats) => *cache = Some((Instant::now(), stats)),
                    // Keep the last values; the error is counted by the store.
                    Err(e) => tracing::warn!(error = %e, "metrics: reading store counts failed"),
                }
            }
            if let Some((_, stats)) = cache.as_ref() {
                self.live_psks.set(stats.live_psks);
                self.expiring
                    .get_or_create(&WithinLabel { within: "7d" })
                    .set(stats.expiring_7d);
                self.expiring
                    .get_or_create(&WithinLabel { within: "30d" })
                    .set(stats.expiring_30d);
                self.expired_within_grace.set(stats.expired_within_grace);
                self.expired_beyond_grace.set(stats.expired_beyond_grace);
            }
        }
        self.intermediate_expiry
            .set(source.signer.intermediate_not_after() - now);
        if let Ok((_, root)) = x509_parser::parse_x509_certificate(&source.signer.root_der) {
            self.root_expiry
                .set(root.validity().not_after.timestamp() - now);
        }
        match source.crl.current() {
            Some(set) => {
                self.crl_expiry
                    .set((set.intermediate.next_update - now).max(0));
                self.crl_revoked.set(set.revoked as i64);
            }
            None => {
                self.crl_expiry.set(0);
            }
        }
        let oldest = self
            .ocsp_oldest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .and_then(|f| (f.0)());
        self.ocsp_oldest_age
            .set(oldest.map_or(0, |t| (now - t).max(0)));
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// What the scrape-time gauges are computed from.
#[derive(Debug)]
pub struct ScrapeSource<'a> {
    pub store: &'a Store,
    pub signer: &'a Signer,
    pub crl: &'a CrlService,
    pub clock: &'a dyn Clock,
    /// `serve --renew-grace`, seconds.
    pub renew_grace: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_decisions_are_counted_with_fixed_labels() {
        let m = Metrics::new();
        m.observe_request(Some("/v1/sign"), 201, "issued", Duration::from_millis(2));
        m.observe_request(
            Some("/v1/sign"),
            403,
            "psk_rejected",
            Duration::from_millis(1),
        );
        m.observe_request(Some("/v1/ca"), 404, "not_found", Duration::from_millis(1));
        m.observe_request(None, 404, "not_found", Duration::from_millis(1));
        m.store_error("database");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        assert!(
            out.contains("ca_certificates_issued_total{route=\"/v1/sign\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("ca_sign_rejections_total{reason=\"psk_rejected\"} 1"),
            "{out}"
        );
        assert!(!out.contains("reason=\"not_found\""), "{out}");
        assert!(out.contains(
            "ca_http_request_duration_seconds_count{route=\"unmatched\",status=\"404\"} 1"
        ));
        assert!(
            out.contains("ca_store_errors_total{kind=\"database\"} 1"),
            "{out}"
        );
        assert!(out.contains("ca_build_info{version="), "{out}");
        assert!(out.ends_with("# EOF\n"));
    }
}
