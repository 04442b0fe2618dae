//! `store copy`: every row from one store to another (SQLite <-> PostgreSQL).

use super::*;

/// `store copy --to URL`: copy, verify, and record the copy in the target's audit log.
pub(super) async fn store_copy(
    from: &str,
    to: &str,
    json: bool,
    clock: &SystemClock,
) -> Result<()> {
    let (from_shown, to_shown) = (crate::store::redact_url(from), crate::store::redact_url(to));
    let source = Store::open(from).await?;
    let target = Store::open(to).await.context("opening the target")?;
    let report = source
        .copy_to(&target)
        .await
        .with_context(|| format!("copying {from_shown} to {to_shown}"))?;
    let counts = report
        .tables
        .iter()
        .map(|t| format!("{} {}", t.table, t.rows))
        .collect::<Vec<_>>()
        .join(", ");
    target
        .audit(&AuditEvent {
            at: clock.now(),
            event: Event::StoreCopied.into(),
            outcome: Outcome::Ok.into(),
            reason: Some(format!(
                "from {from_shown}: {counts}; crl_number {}",
                report.crl_number
            )),
            actor: Some(actor()),
            ..Default::default()
        })
        .await?;
    // Closing checkpoints a SQLite target into its main file (a backup is one file).
    source.close().await;
    target.close().await;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for t in &report.tables {
            println!("{:<13} {:>9} rows  digest {}", t.table, t.rows, t.digest);
        }
        println!("crl_number    {:>9}", report.crl_number);
        eprintln!("copied and verified {from_shown} -> {to_shown}");
    }
    Ok(())
}
