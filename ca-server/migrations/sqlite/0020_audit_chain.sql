-- The audit trail as a hash chain (issue 20; docs/audit.md). Every row
-- written from now on carries its position in the chain (chain_seq, from 1,
-- no gaps) and chain_hash = SHA-256(previous row's chain_hash || canonical
-- encoding of this row). Rows already present predate the chain: they keep
-- NULLs and `audit verify` reports them as not covered (id <= genesis_id).
-- repeats_of marks a row that counts repeats of an aggregated refusal row
-- (rejection_log.rs): the repeats are appended, never only updated.
ALTER TABLE audit ADD COLUMN chain_seq INTEGER;
ALTER TABLE audit ADD COLUMN chain_hash BLOB;
ALTER TABLE audit ADD COLUMN repeats_of INTEGER;
CREATE UNIQUE INDEX audit_chain_seq ON audit (chain_seq);

-- The chain head: one row, updated in every transaction that appends, so
-- appends are serialised (and take SQLite's write lock first).
CREATE TABLE audit_chain (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    seq        INTEGER NOT NULL,
    head       BLOB NOT NULL,
    genesis_id INTEGER NOT NULL,
    -- Which audit key signs this store's checkpoints (hex SHA-256 of its
    -- public key), claimed by the first `serve`: a replica with another
    -- audit-key.pem refuses to start.
    key_id     TEXT
);
INSERT INTO audit_chain (id, seq, head, genesis_id)
    SELECT 1, 0, zeroblob(32), COALESCE(MAX(id), 0) FROM audit;

-- Signed checkpoints: the chain's head and length at a moment, signed with
-- the audit key (audit-key.pem), so a truncated tail is detected.
CREATE TABLE audit_checkpoints (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    head      BLOB NOT NULL,
    key_id    TEXT NOT NULL,
    signature BLOB NOT NULL
);
