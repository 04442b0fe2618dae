//! `ca-server audit verify` (walk the hash chain and the signed checkpoints,
//! report the first break, exit 1 on one) and `audit checkpoint` (sign the
//! chain's head now); also the periodic checkpoint task `serve` runs.
//! The listing (`ca-server audit --since ...`) stays in `admin::Ops`.

use crate::clock::Clock;
use crate::pki::audit_key::{self, CheckpointSigner, PublicKey};
use crate::store::Store;
use crate::store::audit_chain::{self, Report};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The verbs under `audit` (without one, `audit` lists rows).
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain and the signed checkpoints; name the first
    /// edited, deleted, inserted or reordered row (exit 1), or say it is intact.
    Verify {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The audit key's public half (audit-key.pub.pem) [default: the
        /// data dir's audit-key.pem or audit-key.pub.pem].
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
    },
    /// Write a signed checkpoint of the chain's head and length now.
    Checkpoint {
        /// Print the checkpoint as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an `audit` verb on the local store.
/// `token`: the PKCS#11 token when the CA keys (and so the audit key) are in one.
pub async fn run(
    cmd: AuditCommand,
    data_dir: &Path,
    token: Option<&crate::pki::pkcs11::Token>,
    url: &str,
    clock: &dyn Clock,
) -> Result<()> {
    let store = Store::open(url).await?;
    let result = match cmd {
        AuditCommand::Verify { json, public_key } => {
            let key = match public_key {
                Some(path) => PublicKey::from_pem_file(&path)?,
                None => default_public_key(data_dir)?,
            };
            let report = verify(&store, &key).await?;
            print_report(&report, json)?;
            match &report.first_break {
                Some(b) => Err(anyhow::anyhow!("the audit trail is broken: {b}")),
                None => Ok(()),
            }
        }
        AuditCommand::Checkpoint { json } => {
            let key = audit_key::open(data_dir, token)?;
            let written = checkpoint(&store, &*key, clock.now(), false)
                .await?
                .context("no checkpoint was written")?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "seq": written.seq,
                        "head": hex::encode(written.head),
                        "at": written.at,
                        "key_id": written.key_id,
                    })
                );
            } else {
                println!(
                    "checkpoint: {} rows, head {}, signed by audit key {}",
                    written.seq,
                    hex::encode(written.head),
                    written.key_id
                );
            }
            Ok(())
        }
    };
    store.close().await;
    result
}

/// The data dir's audit key, public half: from the private key file if
/// readable here, else from the public file.
fn default_public_key(data_dir: &Path) -> Result<PublicKey> {
    let private = data_dir.join(audit_key::KEY_FILE);
    let public = data_dir.join(audit_key::PUBLIC_FILE);
    if private.exists() {
        return PublicKey::from_pem_file(&private);
    }
    if public.exists() {
        return PublicKey::from_pem_file(&public);
    }
    bail!(
        "no audit key in {} (neither {} nor {}): pass --public-key FILE",
        data_dir.display(),
        audit_key::KEY_FILE,
        audit_key::PUBLIC_FILE
    )
}

/// Reads the trail, the head and the checkpoints and walks them.
pub async fn verify(store: &Store, key: &PublicKey) -> Result<Report> {
    let (head, checkpoints, rows) = store.audit_snapshot().await?;
    let checkpoints: Vec<_> = checkpoints
        .iter()
        .map(|c| {
            let ok = c.key_id == key.key_id() && key.verifies(c.seq, &c.head, c.at, &c.signature);
            c.checked(ok)
        })
        .collect();
    Ok(audit_chain::verify(&rows, &head, &checkpoints))
}

fn print_report(report: &Report, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    match &report.first_break {
        Some(b) => println!("BROKEN: {b}"),
        None => println!(
            "intact: {} rows chained, head {}; {} signed checkpoint(s){}{}",
            report.rows,
            report.head,
            report.checkpoints,
            report
                .last_checkpoint
                .map(|s| format!(", the newest at position {s}"))
                .unwrap_or_default(),
            if report.unchained > 0 {
                format!(
                    "; {} older row(s) predate the chain and are not covered",
                    report.unchained
                )
            } else {
                String::new()
            }
        ),
    }
    Ok(())
}

/// Writes a signed checkpoint (with `skip_same`, none if the newest one
/// already covers the whole chain).
pub async fn checkpoint(
    store: &Store,
    signer: &dyn CheckpointSigner,
    now: i64,
    skip_same: bool,
) -> Result<Option<crate::store::NewCheckpoint>> {
    store
        .audit_checkpoint(now, skip_same, |seq, head, at| {
            audit_key::sign_checkpoint(signer, seq, head, at)
        })
        .await
}

/// `serve`'s checkpoint task: one checkpoint every `interval` while the
/// chain grew. (`serve` writes one more at shutdown.)
pub async fn run_checkpoints(
    store: Store,
    signer: std::sync::Arc<dyn CheckpointSigner>,
    clock: std::sync::Arc<dyn Clock>,
    interval: Duration,
) {
    let mut timer = tokio::time::interval(interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer.tick().await; // the first tick is immediate
    loop {
        timer.tick().await;
        if let Err(e) = checkpoint(&store, signer.as_ref(), clock.now(), true).await {
            tracing::warn!(error = %e, "writing an audit checkpoint failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditEvent, CertRecord, Issuance};
    use audit_chain::Break;
    use policy::PskHash;

    fn event(at: i64, name: &str, host: &str) -> AuditEvent {
        AuditEvent {
            at,
            event: name.into(),
            hostname: Some(host.into()),
            outcome: "ok".into(),
            ..Default::default()
        }
    }

    fn cert(serial: &str, host: &str, psk: &PskHash) -> CertRecord {
        CertRecord {
            serial: serial.into(),
            hostname: host.into(),
            kind: "host".into(),
            public_key_sha256: vec![1; 32],
            psk_hash: Some(psk.0.to_vec()),
            psk_expires_at: Some(2_000_000_000),
            not_before: 0,
            not_after: 2_000_000_000,
            der: vec![0x30, 0x00],
            issued_at: 1_800_000_000,
            revoked_at: None,
            revocation_reason: None,
            superseded_by: None,
        }
    }

    /// Rows through every write path: one-off rows, a PSK and its issuance
    /// in one transaction, the group-commit writer's batches, and counted
    /// refusal repeats; then the chain verifies and an edit is named.
    #[tokio::test]
    async fn every_write_path_extends_one_verifiable_chain() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.unwrap();
        let key = audit_key::load_or_create(dir.path()).unwrap();
        let t0 = 1_800_000_000;
        store.audit(&event(t0, "psk_removed", "a")).await.unwrap();
        let id = store
            .audit_returning_id(&event(t0, "sign", "b"))
            .await
            .unwrap();
        store
            .audit_repeats(&[(id, 4, t0 + 5), (id, 2, t0 + 3)])
            .await
            .unwrap();
        let psk = PskHash([9; 32]);
        store
            .put_psk("c", &psk, &[], t0, t0 + 100, &event(t0, "psk_added", "c"))
            .await
            .unwrap();
        store
            .record_issuance(&Issuance {
                psk_hash: psk,
                now: t0 + 1,
                cert: &cert("01", "c", &psk),
                audit: &event(t0 + 1, "issued", "c"),
            })
            .await
            .unwrap();
        checkpoint(&store, &key, t0 + 2, false)
            .await
            .unwrap()
            .unwrap();
        // The group-commit writer (the SQLite lane), several at once.
        store.start_group_commit();
        let mut waiting = Vec::new();
        for i in 0..20 {
            let host = format!("h{i}");
            let psk = PskHash([i as u8; 32]);
            store
                .put_psk(
                    &host,
                    &psk,
                    &[],
                    t0,
                    t0 + 100,
                    &event(t0, "psk_added", &host),
                )
                .await
                .unwrap();
            let store = store.clone();
            waiting.push(tokio::spawn(async move {
                let c = cert(&format!("{i:032x}"), &host, &psk);
                let a = event(t0 + 2, "issued", &host);
                store
                    .record_issuance(&Issuance {
                        psk_hash: psk,
                        now: t0 + 2,
                        cert: &c,
                        audit: &a,
                    })
                    .await
            }));
        }
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        // Repeat rows are folded into their row's count in the listing.
        let listed = store.audit_since(0, 1000).await.unwrap();
        let b = listed.iter().find(|r| r.id == Some(id)).unwrap();
        assert_eq!((b.count, b.last_at), (7, Some(t0 + 5)));
        assert!(
            listed
                .iter()
                .all(|r| r.event != crate::store::Event::RefusalRepeats)
        );

        let report = verify(&store, &key.public_key()).await.unwrap();
        assert!(report.intact(), "{report:?}");
        // 2 one-off rows, 2 repeat rows, psk_added + issued, 20 × 2.
        assert_eq!(report.rows, 6 + 40);
        assert_eq!(report.last_checkpoint, Some(6));

        // A checkpoint under another key does not count as signed.
        let other = tempfile::tempdir().unwrap();
        let other = audit_key::load_or_create(other.path()).unwrap();
        let report = verify(&store, &other.public_key()).await.unwrap();
        assert!(matches!(
            report.first_break,
            Some(Break::BadCheckpointSignature { position: 6, .. })
        ));

        // An edit through SQL is named by position and id.
        rusqlite::Connection::open(dir.path().join("t.db"))
            .unwrap()
            .execute("UPDATE audit SET hostname = 'x' WHERE chain_seq = 9", [])
            .unwrap();
        let report = verify(&store, &key.public_key()).await.unwrap();
        let Some(Break::Edited { position: 9, id }) = report.first_break else {
            panic!("{report:?}");
        };
        assert!(id > 0);
        store.close().await;
    }
}
