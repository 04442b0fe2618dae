//! How the admin verbs print their answers: one function per answer, used
//! for local and remote runs alike, so both print the same bytes. Names
//! coming from the store are printed escaped.

use super::{CertView, PskAdded, PskIssued, RevokeReport};
use crate::store::{AuditEvent, PskInfo};
use policy::hostname::escape_for_display;
use proto::timefmt::rfc3339;

/// `psk add`: the PSK alone, or the JSON answer.
pub fn psk_added(added: &PskAdded, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(added)?);
    } else {
        println!("{}", added.psk);
    }
    Ok(())
}

/// `psk batch`: `HOST<TAB>PSK` lines.
pub fn psk_batch(issued: &[PskIssued]) {
    let mut out = String::with_capacity(issued.len() * 64);
    for i in issued {
        out.push_str(&i.hostname);
        out.push('\t');
        out.push_str(&i.psk);
        out.push('\n');
    }
    print!("{out}");
    zeroize::Zeroize::zeroize(&mut out);
}

/// `psk list`: hostnames, expiry and extra names; never a secret or hash.
pub fn psk_list(psks: &[PskInfo], now: i64, json: bool) -> anyhow::Result<()> {
    for p in psks {
        if json {
            println!("{}", serde_json::to_string(p)?);
        } else {
            let state = if p.expires_at <= now {
                " (expired)"
            } else {
                ""
            };
            println!(
                "{} expires={}{} sans={}",
                escape_for_display(&p.hostname),
                rfc3339(p.expires_at),
                state,
                if p.allowed_sans.is_empty() {
                    "-".into()
                } else {
                    p.allowed_sans.join(",")
                }
            );
        }
    }
    Ok(())
}

/// `cert list`: one line (or JSON object) per certificate.
pub fn cert_list(certs: &[CertView], json: bool) -> anyhow::Result<()> {
    use std::io::Write;
    // Buffered: a listing can be 100,000 lines, and stdout would otherwise
    // make one write call per line.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for c in certs {
        if json {
            writeln!(out, "{}", serde_json::to_string(c)?)?;
        } else {
            let detail = match (&c.revoked_at, &c.superseded_by) {
                (Some(at), _) => format!(
                    " revoked_at={at} reason={}",
                    c.revocation_reason.as_deref().unwrap_or("unspecified")
                ),
                (None, Some(next)) => format!(" superseded_by={next}"),
                (None, None) => String::new(),
            };
            let detail = match &c.stale {
                Some(stale) => format!("{detail} stale={stale}"),
                None => detail,
            };
            writeln!(
                out,
                "{} {} {} not_after={} kind={}{detail}",
                c.serial,
                c.status,
                escape_for_display(&c.hostname),
                c.not_after,
                c.kind,
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `cert show`: `key: value` lines then the PEM, or the JSON object.
pub fn cert_show(c: &CertView, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(c)?);
        return Ok(());
    }
    let v = serde_json::to_value(c)?;
    for (k, val) in v.as_object().expect("a struct is an object") {
        if k != "pem" {
            println!(
                "{k}: {}",
                val.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| val.to_string())
            );
        }
    }
    print!("{}", c.pem.as_deref().unwrap_or(""));
    Ok(())
}

/// `revoke`: what was revoked, what already was, and the CRL published.
pub fn revoke(report: &RevokeReport, json: bool) {
    if let Some(note) = &report.note {
        eprintln!("{note}");
    }
    if json {
        let mut out = serde_json::json!({
            "revoked": report.revoked,
            "already_revoked": report.already_revoked,
            "crl_number": report.crl_number,
        });
        if !report.acme_accounts_deactivated.is_empty() {
            out["acme_accounts_deactivated"] = serde_json::json!(report.acme_accounts_deactivated);
        }
        println!("{out}");
        return;
    }
    for id in &report.acme_accounts_deactivated {
        println!("deactivated ACME account {id}");
    }
    for c in &report.revoked {
        println!(
            "revoked {} {} reason={}",
            c.serial,
            escape_for_display(&c.hostname),
            report.reason
        );
    }
    for c in &report.already_revoked {
        println!(
            "already revoked {} {} at {} reason={}; nothing changed",
            c.serial,
            escape_for_display(&c.hostname),
            c.revoked_at.as_deref().unwrap_or_default(),
            c.reason.as_deref().unwrap_or("unspecified")
        );
    }
    if report.revoked.is_empty() && report.already_revoked.is_empty() {
        println!("nothing to revoke: every certificate of that host is revoked or expired");
    }
    if let (Some(number), Some(listed)) = (report.crl_number, report.crl_listed) {
        eprintln!("published CRL number {number} ({listed} certificates listed)");
    }
}

/// `audit`: one escaped line (or JSON object) per row.
pub fn audit(rows: &[AuditEvent], json: bool) -> anyhow::Result<()> {
    for row in rows {
        if json {
            println!("{}", serde_json::to_string(row)?);
        } else {
            println!("{}", audit_line(row));
        }
    }
    Ok(())
}

/// One audit row as an escaped, single line.
pub fn audit_line(a: &AuditEvent) -> String {
    let opt = |s: &Option<String>| {
        s.as_deref()
            .map(escape_for_display)
            .unwrap_or_else(|| "-".into())
    };
    let repeats = match a.last_at {
        Some(last) if a.count > 1 => format!(" count={} last={}", a.count, rfc3339(last)),
        _ => String::new(),
    };
    format!(
        "{} {} outcome={} host={} serial={} reason={} peer={} actor={}{repeats}",
        rfc3339(a.at),
        a.event,
        a.outcome,
        opt(&a.hostname),
        a.serial.as_deref().unwrap_or("-"),
        opt(&a.reason),
        opt(&a.peer),
        opt(&a.actor),
    )
}
