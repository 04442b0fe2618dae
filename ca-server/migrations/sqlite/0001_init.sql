-- Initial schema. Times are Unix seconds (sqlx Any carries only numbers,
-- strings and bytes). PSKs are stored only as SHA-256.
CREATE TABLE psks (
    hostname     TEXT PRIMARY KEY NOT NULL,
    psk_hash     BLOB NOT NULL,
    allowed_sans TEXT NOT NULL,          -- JSON array of extra names
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX psks_expires_at ON psks (expires_at);

CREATE TABLE certificates (
    serial            TEXT PRIMARY KEY NOT NULL, -- lowercase hex, 32 digits
    hostname          TEXT NOT NULL,
    kind              TEXT NOT NULL,             -- host | server | admin
    public_key_sha256 BLOB NOT NULL,
    psk_hash          BLOB,                      -- the PSK redeemed for it, if any
    psk_expires_at    INTEGER,                   -- end of that PSK's lifetime (idempotent retry)
    not_before        INTEGER NOT NULL,
    not_after         INTEGER NOT NULL,
    der               BLOB NOT NULL,
    issued_at         INTEGER NOT NULL,
    revoked_at        INTEGER,
    revocation_reason TEXT,
    superseded_by     TEXT
);
CREATE INDEX certificates_hostname ON certificates (hostname);
CREATE INDEX certificates_psk_hash ON certificates (psk_hash);
CREATE INDEX certificates_not_after ON certificates (not_after);

CREATE TABLE audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    event    TEXT NOT NULL,
    hostname TEXT,
    serial   TEXT,
    outcome  TEXT NOT NULL,
    reason   TEXT,
    peer     TEXT,
    actor    TEXT
);
CREATE INDEX audit_at ON audit (at);

-- The CRL number: one row, only ever incremented.
CREATE TABLE crl_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    crl_number INTEGER NOT NULL
);
INSERT INTO crl_state (id, crl_number) VALUES (1, 0);
