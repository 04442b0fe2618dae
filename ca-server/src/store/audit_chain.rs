//! The audit trail's hash chain: the canonical encoding of a row, the link
//! hash, and the verification walk. Pure functions (no IO, no clock); the
//! store appends with them (`append` in this module's caller, `store/mod.rs`
//! and `store/writer.rs`) and `ca-server audit verify` walks with them.
//! Design and its limits: docs/audit.md.
//!
//! `hash(n) = SHA-256(hash(n-1) || canonical(row n))`, `hash(0)` = 32 zero
//! bytes. The canonical encoding is a version byte, then every field in a
//! fixed order, each integer as 8 bytes big-endian and each text as a
//! presence byte (0 absent, 1 present), a 4-byte big-endian length and the
//! UTF-8 bytes: no two different rows encode alike.

use ring::digest::{SHA256, digest};
use std::collections::HashMap;

/// The hash before the first row of a chain.
pub const GENESIS: [u8; 32] = [0; 32];

/// Encoding version, the first byte of every canonical row.
const VERSION: u8 = 1;

/// The fields of one audit row that its link hash covers.
///
/// An ordinary row's `repeat_count` and `last_at` are not covered: an
/// aggregated refusal row counts up after it was written. Its repeats are
/// appended as rows of their own (`repeats` set, covering how many and the
/// latest), and the walk checks that each aggregated row's count and
/// `last_at` are exactly what its repeat rows add up to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fields<'a> {
    pub at: i64,
    pub event: &'a str,
    pub hostname: Option<&'a str>,
    pub serial: Option<&'a str>,
    pub outcome: &'a str,
    pub reason: Option<&'a str>,
    pub peer: Option<&'a str>,
    pub actor: Option<&'a str>,
    /// For a repeat row: (the aggregated row's id, how many, the latest).
    pub repeats: Option<(i64, i64, i64)>,
}

fn put_int(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_text(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// The canonical encoding of the row at chain position `seq`.
pub fn canonical(seq: i64, f: &Fields<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(VERSION);
    put_int(&mut out, seq);
    put_int(&mut out, f.at);
    put_text(&mut out, Some(f.event));
    put_text(&mut out, f.hostname);
    put_text(&mut out, f.serial);
    put_text(&mut out, Some(f.outcome));
    put_text(&mut out, f.reason);
    put_text(&mut out, f.peer);
    put_text(&mut out, f.actor);
    match f.repeats {
        None => out.push(0),
        Some((of, n, last_at)) => {
            out.push(1);
            put_int(&mut out, of);
            put_int(&mut out, n);
            put_int(&mut out, last_at);
        }
    }
    out
}

/// The link hash of the row at `seq` following `prev`.
pub fn link(prev: &[u8; 32], seq: i64, f: &Fields<'_>) -> [u8; 32] {
    let mut input = Vec::with_capacity(160);
    input.extend_from_slice(prev);
    input.extend_from_slice(&canonical(seq, f));
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, &input).as_ref());
    out
}

/// A 32-byte hash from a stored column (`None` if it is not 32 bytes).
pub fn hash_from(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

/// One audit row as stored, for the walk.
#[derive(Debug, Clone, Default)]
pub struct StoredRow {
    pub id: i64,
    pub at: i64,
    pub event: String,
    pub hostname: Option<String>,
    pub serial: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub peer: Option<String>,
    pub actor: Option<String>,
    pub repeat_count: i64,
    pub last_at: Option<i64>,
    pub repeats_of: Option<i64>,
    pub chain_seq: Option<i64>,
    pub chain_hash: Option<Vec<u8>>,
}

impl StoredRow {
    pub fn fields(&self) -> Fields<'_> {
        Fields {
            at: self.at,
            event: &self.event,
            hostname: self.hostname.as_deref(),
            serial: self.serial.as_deref(),
            outcome: &self.outcome,
            reason: self.reason.as_deref(),
            peer: self.peer.as_deref(),
            actor: self.actor.as_deref(),
            repeats: self
                .repeats_of
                .map(|of| (of, self.repeat_count, self.last_at.unwrap_or(self.at))),
        }
    }
}

/// A checkpoint as stored, its signature already checked by the caller.
#[derive(Debug, Clone)]
pub struct StoredCheckpoint {
    pub id: i64,
    pub at: i64,
    pub seq: i64,
    pub head: Vec<u8>,
    /// Whether the signature verified under the audit key.
    pub signature_ok: bool,
}

/// The chain head row (`audit_chain`).
#[derive(Debug, Clone)]
pub struct Head {
    pub seq: i64,
    pub head: Vec<u8>,
    /// Rows with an id up to this predate the chain.
    pub genesis_id: i64,
}

/// The first thing wrong with a trail.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Break {
    /// The row at this position no longer hashes to its link: a field was
    /// changed (or rows' contents were swapped).
    Edited { position: i64, id: i64 },
    /// The rows at these positions are missing (`id`: the next row left).
    Deleted {
        position: i64,
        missing: i64,
        id: i64,
    },
    /// A row that the chain never appended (no position, or a position
    /// another row holds).
    Inserted { position: i64, id: i64 },
    /// A row found out of its chain position.
    Reordered { position: i64, id: i64 },
    /// An aggregated refusal row whose count or last time is not what its
    /// appended repeat rows add up to.
    RepeatsEdited {
        position: i64,
        id: i64,
        stored_count: i64,
        chained_count: i64,
    },
    /// The chain ends before a signed checkpoint's position.
    Truncated {
        position: i64,
        checkpoint_id: i64,
        checkpoint_seq: i64,
    },
    /// A signed checkpoint's head is not the chain's hash at its position:
    /// a row at or before it was rewritten (hashes recomputed).
    CheckpointMismatch {
        position: i64,
        checkpoint_id: i64,
        /// The last position a checkpoint still vouches for (0: none).
        last_good: i64,
    },
    /// A checkpoint whose signature does not verify under the audit key.
    BadCheckpointSignature { checkpoint_id: i64, position: i64 },
    /// The chain head row disagrees with the last row (rows removed from
    /// the tail, or the head edited).
    HeadMismatch { position: i64, head_seq: i64 },
}

impl Break {
    /// The chain position the break is at (for ordering and messages).
    pub fn position(&self) -> i64 {
        match self {
            Break::Edited { position, .. }
            | Break::Deleted { position, .. }
            | Break::Inserted { position, .. }
            | Break::Reordered { position, .. }
            | Break::RepeatsEdited { position, .. }
            | Break::Truncated { position, .. }
            | Break::CheckpointMismatch { position, .. }
            | Break::BadCheckpointSignature { position, .. }
            | Break::HeadMismatch { position, .. } => *position,
        }
    }
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Break::Edited { position, id } => {
                write!(
                    f,
                    "row id {id} at position {position} was edited (its hash does not match)"
                )
            }
            Break::Deleted {
                position,
                missing,
                id,
            } => write!(
                f,
                "{missing} row(s) deleted at position {position} (before row id {id})"
            ),
            Break::Inserted { position, id } => write!(
                f,
                "row id {id} was inserted at position {position} (the chain never appended it)"
            ),
            Break::Reordered { position, id } => write!(
                f,
                "row id {id} is out of order at position {position} (rows were reordered)"
            ),
            Break::RepeatsEdited {
                position,
                id,
                stored_count,
                chained_count,
            } => write!(
                f,
                "row id {id} at position {position}: its repeat count or last time was edited \
                 (stored count {stored_count}, the chain adds up to {chained_count})"
            ),
            Break::Truncated {
                position,
                checkpoint_id,
                checkpoint_seq,
            } => write!(
                f,
                "the trail is truncated: it ends at position {position}, but signed checkpoint \
                 {checkpoint_id} vouches for {checkpoint_seq} rows"
            ),
            Break::CheckpointMismatch {
                position,
                checkpoint_id,
                last_good,
            } => write!(
                f,
                "signed checkpoint {checkpoint_id} does not match the chain at position {position}: \
                 a row after position {last_good} and at or before {position} was rewritten"
            ),
            Break::BadCheckpointSignature {
                checkpoint_id,
                position,
            } => write!(
                f,
                "checkpoint {checkpoint_id} (position {position}) is not signed by the audit key"
            ),
            Break::HeadMismatch { position, head_seq } => write!(
                f,
                "the chain head says {head_seq} rows but the trail ends at position {position}: \
                 rows were removed from the tail (or the head edited)"
            ),
        }
    }
}

/// What the walk found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Rows in the chain (the last position verified).
    pub rows: i64,
    /// Rows older than the chain (written before migration 0020), not covered.
    pub unchained: i64,
    /// The chain's head hash (hex) after the last verified row.
    pub head: String,
    /// Signed checkpoints checked, and the newest one's position.
    pub checkpoints: usize,
    pub last_checkpoint: Option<i64>,
    /// The first break, if any.
    #[serde(rename = "break")]
    pub first_break: Option<Break>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.first_break.is_none()
    }
}

/// Walks `rows` (every audit row, in id order) against the head row and
/// the checkpoints; reports the first break by chain position.
///
/// Ids grow with chain positions (both are assigned under the chain lock),
/// so the walk goes in id order and expects positions 1, 2, 3, ...; a
/// position out of turn is told apart as deleted (nobody holds it),
/// reordered (a later row holds it) or inserted (two rows claim it).
pub fn verify(rows: &[StoredRow], head: &Head, checkpoints: &[StoredCheckpoint]) -> Report {
    let mut holders: HashMap<i64, u32> = HashMap::new();
    for r in rows.iter().filter(|r| r.id > head.genesis_id) {
        if let Some(seq) = r.chain_seq {
            *holders.entry(seq).or_default() += 1;
        }
    }
    let by_seq: HashMap<i64, &StoredCheckpoint> = checkpoints.iter().map(|c| (c.seq, c)).collect();
    let mut first: Option<Break> = None;
    // A bad signature is a break at its checkpoint's position.
    for c in checkpoints.iter().filter(|c| !c.signature_ok) {
        note(
            &mut first,
            Break::BadCheckpointSignature {
                checkpoint_id: c.id,
                position: c.seq,
            },
        );
    }
    let mut prev = GENESIS;
    let mut expected = 1i64;
    let mut last_good_checkpoint = 0;
    let mut unchained = 0;
    // Repeats appended for each aggregated row: (sum, latest).
    let mut repeats: HashMap<i64, (i64, Option<i64>)> = HashMap::new();
    let mut positions: HashMap<i64, i64> = HashMap::new();
    let mut walked = false;
    for r in rows {
        if r.id <= head.genesis_id {
            unchained += 1;
            continue;
        }
        let Some(seq) = r.chain_seq else {
            note(
                &mut first,
                Break::Inserted {
                    position: expected,
                    id: r.id,
                },
            );
            break;
        };
        if seq != expected {
            let b = if holders.get(&seq).copied().unwrap_or(0) > 1 {
                Break::Inserted {
                    position: seq,
                    id: r.id,
                }
            } else if seq < expected || holders.contains_key(&expected) {
                Break::Reordered {
                    position: expected,
                    id: r.id,
                }
            } else {
                Break::Deleted {
                    position: expected,
                    missing: seq - expected,
                    id: r.id,
                }
            };
            note(&mut first, b);
            break;
        }
        let hash = link(&prev, seq, &r.fields());
        if r.chain_hash.as_deref() != Some(&hash[..]) {
            let b = if holders.get(&seq).copied().unwrap_or(0) > 1 {
                Break::Inserted {
                    position: seq,
                    id: r.id,
                }
            } else {
                Break::Edited {
                    position: seq,
                    id: r.id,
                }
            };
            note(&mut first, b);
            break;
        }
        if let Some(c) = by_seq.get(&seq).filter(|c| c.signature_ok) {
            if c.head[..] != hash[..] {
                note(
                    &mut first,
                    Break::CheckpointMismatch {
                        position: seq,
                        checkpoint_id: c.id,
                        last_good: last_good_checkpoint,
                    },
                );
                break;
            }
            last_good_checkpoint = seq;
        }
        if let Some(of) = r.repeats_of {
            let e = repeats.entry(of).or_insert((0, None));
            e.0 += r.repeat_count;
            e.1 = e.1.max(r.last_at);
        } else {
            positions.insert(r.id, seq);
        }
        prev = hash;
        expected += 1;
        walked = true;
    }
    let rows_ok = expected - 1;
    // Aggregated rows: the mutable columns must be what the chain adds up to.
    for r in rows.iter().filter(|r| r.repeats_of.is_none()) {
        let Some(&position) = positions.get(&r.id) else {
            continue;
        };
        let (added, latest) = repeats.get(&r.id).copied().unwrap_or((0, None));
        if r.repeat_count != 1 + added || r.last_at != latest {
            note(
                &mut first,
                Break::RepeatsEdited {
                    position,
                    id: r.id,
                    stored_count: r.repeat_count,
                    chained_count: 1 + added,
                },
            );
        }
    }
    // The tail: against the newest valid checkpoint, then the head row.
    let newest = checkpoints
        .iter()
        .filter(|c| c.signature_ok)
        .max_by_key(|c| c.seq);
    if first.is_none() {
        if let Some(c) = newest.filter(|c| c.seq > rows_ok) {
            note(
                &mut first,
                Break::Truncated {
                    position: rows_ok,
                    checkpoint_id: c.id,
                    checkpoint_seq: c.seq,
                },
            );
        } else if head.seq != rows_ok || (walked && head.head[..] != prev[..]) {
            note(
                &mut first,
                Break::HeadMismatch {
                    position: rows_ok,
                    head_seq: head.seq,
                },
            );
        }
    }
    Report {
        rows: rows_ok,
        unchained,
        head: hex::encode(prev),
        checkpoints: checkpoints.len(),
        last_checkpoint: newest.map(|c| c.seq),
        first_break: first,
    }
}

/// Keeps the break at the lowest position.
fn note(first: &mut Option<Break>, b: Break) {
    if first.as_ref().is_none_or(|f| b.position() < f.position()) {
        *first = Some(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `n` rows appended after `genesis_id` pre-chain rows.
    fn chain(n: i64, genesis_id: i64) -> (Vec<StoredRow>, Head) {
        let mut rows: Vec<StoredRow> = (1..=genesis_id)
            .map(|id| StoredRow {
                id,
                event: "old".into(),
                outcome: "ok".into(),
                repeat_count: 1,
                ..Default::default()
            })
            .collect();
        let mut prev = GENESIS;
        for seq in 1..=n {
            let mut r = StoredRow {
                id: genesis_id + seq,
                at: 1_800_000_000 + seq,
                event: "issued".into(),
                hostname: Some(format!("h{seq}.example")),
                outcome: "ok".into(),
                repeat_count: 1,
                chain_seq: Some(seq),
                ..Default::default()
            };
            let h = link(&prev, seq, &r.fields());
            r.chain_hash = Some(h.to_vec());
            prev = h;
            rows.push(r);
        }
        let head = Head {
            seq: n,
            head: prev.to_vec(),
            genesis_id,
        };
        (rows, head)
    }

    fn checkpoint(rows: &[StoredRow], seq: i64, id: i64) -> StoredCheckpoint {
        let r = rows.iter().find(|r| r.chain_seq == Some(seq)).unwrap();
        StoredCheckpoint {
            id,
            at: 0,
            seq,
            head: r.chain_hash.clone().unwrap(),
            signature_ok: true,
        }
    }

    /// Re-links every row from `from` on, as an attacker with the database could.
    fn relink(rows: &mut [StoredRow], head: &mut Head) {
        let mut prev = GENESIS;
        for r in rows.iter_mut().filter(|r| r.chain_seq.is_some()) {
            let h = link(&prev, r.chain_seq.unwrap(), &r.fields());
            r.chain_hash = Some(h.to_vec());
            prev = h;
        }
        head.head = prev.to_vec();
    }

    #[test]
    fn encoding_is_unambiguous() {
        // Moving bytes between adjacent text fields changes the encoding.
        let a = Fields {
            event: "ab",
            outcome: "c",
            ..Default::default()
        };
        let b = Fields {
            event: "a",
            outcome: "bc",
            ..Default::default()
        };
        assert_ne!(canonical(1, &a), canonical(1, &b));
        // Absent and empty differ.
        let c = Fields {
            reason: Some(""),
            ..a
        };
        assert_ne!(canonical(1, &a), canonical(1, &c));
        // The position is covered.
        assert_ne!(canonical(1, &a), canonical(2, &a));
        // A repeat row differs from an ordinary one.
        let d = Fields {
            repeats: Some((1, 1, 0)),
            ..a
        };
        assert_ne!(canonical(1, &a), canonical(1, &d));
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let (rows, head) = chain(20, 3);
        let cps = [checkpoint(&rows, 10, 1), checkpoint(&rows, 20, 2)];
        let report = verify(&rows, &head, &cps);
        assert!(report.intact(), "{report:?}");
        assert_eq!((report.rows, report.unchained), (20, 3));
        assert_eq!(report.last_checkpoint, Some(20));
        // An empty chain too.
        let (rows, head) = chain(0, 0);
        assert!(verify(&rows, &head, &[]).intact());
    }

    #[test]
    fn an_edited_field_names_its_row() {
        let (mut rows, head) = chain(10, 0);
        rows[4].reason = Some("edited".into());
        let report = verify(&rows, &head, &[]);
        assert_eq!(
            report.first_break,
            Some(Break::Edited { position: 5, id: 5 })
        );
        assert_eq!(report.rows, 4);
    }

    #[test]
    fn a_deleted_row_is_named() {
        let (mut rows, head) = chain(10, 2);
        rows.remove(2 + 6); // position 7, id 9
        assert_eq!(
            verify(&rows, &head, &[]).first_break,
            Some(Break::Deleted {
                position: 7,
                missing: 1,
                id: 10
            })
        );
    }

    #[test]
    fn inserted_rows_are_named() {
        // Without a position.
        let (mut rows, head) = chain(5, 0);
        rows.insert(
            3,
            StoredRow {
                id: 4,
                event: "forged".into(),
                outcome: "ok".into(),
                ..Default::default()
            },
        );
        for (i, r) in rows.iter_mut().enumerate() {
            r.id = i as i64 + 1;
        }
        assert_eq!(
            verify(&rows, &head, &[]).first_break,
            Some(Break::Inserted { position: 4, id: 4 })
        );
        // With a position another row holds.
        let (mut rows, head) = chain(5, 0);
        let mut forged = rows[2].clone();
        forged.id = 100;
        forged.reason = Some("forged".into());
        rows.push(forged);
        assert_eq!(
            verify(&rows, &head, &[]).first_break,
            Some(Break::Inserted {
                position: 3,
                id: 100
            })
        );
    }

    #[test]
    fn reordered_rows_are_named() {
        let (mut rows, head) = chain(6, 0);
        // Swap the ids of rows 3 and 4 (the listing order).
        rows[2].id = 4;
        rows[3].id = 3;
        rows.sort_by_key(|r| r.id);
        assert_eq!(
            verify(&rows, &head, &[]).first_break,
            Some(Break::Reordered { position: 3, id: 3 })
        );
    }

    #[test]
    fn a_truncated_tail_fails_against_the_last_checkpoint() {
        let (mut rows, mut head) = chain(10, 0);
        let cps = [checkpoint(&rows, 8, 1)];
        rows.truncate(7);
        // The attacker also fixes the head row.
        head.seq = 7;
        head.head = rows[6].chain_hash.clone().unwrap();
        assert_eq!(
            verify(&rows, &head, &cps).first_break,
            Some(Break::Truncated {
                position: 7,
                checkpoint_id: 1,
                checkpoint_seq: 8
            })
        );
        // Without the head fixed, the head row alone tells.
        let (mut rows, head) = chain(10, 0);
        rows.truncate(9);
        assert_eq!(
            verify(&rows, &head, &[]).first_break,
            Some(Break::HeadMismatch {
                position: 9,
                head_seq: 10
            })
        );
    }

    #[test]
    fn a_rewritten_chain_fails_against_a_checkpoint() {
        let (mut rows, mut head) = chain(10, 0);
        let cps = [checkpoint(&rows, 3, 1), checkpoint(&rows, 8, 2)];
        rows[4].reason = Some("edited".into());
        relink(&mut rows, &mut head);
        assert_eq!(
            verify(&rows, &head, &cps).first_break,
            Some(Break::CheckpointMismatch {
                position: 8,
                checkpoint_id: 2,
                last_good: 3
            })
        );
        // A checkpoint not signed by the key is a break of its own.
        let (rows, head) = chain(10, 0);
        let mut cp = checkpoint(&rows, 6, 9);
        cp.signature_ok = false;
        assert_eq!(
            verify(&rows, &head, &[cp]).first_break,
            Some(Break::BadCheckpointSignature {
                checkpoint_id: 9,
                position: 6
            })
        );
    }

    #[test]
    fn aggregated_counts_must_add_up_to_their_repeat_rows() {
        let (mut rows, _) = chain(2, 0);
        // Row 1 aggregated 1 + 4 + 2 refusals; the repeat rows are appended.
        let mut prev = hash_from(rows[1].chain_hash.as_deref().unwrap()).unwrap();
        for (seq, n, last) in [(3, 4, 1_800_000_100), (4, 2, 1_800_000_200)] {
            let mut r = StoredRow {
                id: seq,
                at: last,
                event: "refusal_repeats".into(),
                outcome: "counted".into(),
                repeat_count: n,
                last_at: Some(last),
                repeats_of: Some(1),
                chain_seq: Some(seq),
                ..Default::default()
            };
            let h = link(&prev, seq, &r.fields());
            r.chain_hash = Some(h.to_vec());
            prev = h;
            rows.push(r);
        }
        rows[0].repeat_count = 7;
        rows[0].last_at = Some(1_800_000_200);
        let head = Head {
            seq: 4,
            head: prev.to_vec(),
            genesis_id: 0,
        };
        assert!(verify(&rows, &head, &[]).intact());
        // Lowering the count (hiding refusals) is caught.
        rows[0].repeat_count = 2;
        assert_eq!(
            verify(&rows, &head, &[]).first_break,
            Some(Break::RepeatsEdited {
                position: 1,
                id: 1,
                stored_count: 2,
                chained_count: 7
            })
        );
    }
}
