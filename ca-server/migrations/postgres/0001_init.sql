-- Initial schema. Times are Unix seconds (sqlx Any carries only numbers,
-- strings and bytes). PSKs are stored only as SHA-256.
CREATE TABLE psks (
    hostname     TEXT PRIMARY KEY NOT NULL,
    psk_hash     BYTEA NOT NULL,
    allowed_sans TEXT NOT NULL,          -- JSON array of extra names
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX psks_expires_at ON psks (expires_at);

CREATE TABLE certificates (
    serial            TEXT PRIMARY KEY NOT NULL, -- lowercase hex, 32 digits
    hostname          TEXT NOT NULL,
    kind              TEXT NOT NULL,             -- host | server | admin
    public_key_sha256 BYTEA NOT NULL,
    psk_hash          BYTEA,                      -- the PSK redeemed for it, if any
    psk_expires_at    BIGINT,                   -- end of that PSK's lifetime (idempotent retry)
    not_before        BIGINT NOT NULL,
    not_after         BIGINT NOT NULL,
    der               BYTEA NOT NULL,
    issued_at         BIGINT NOT NULL,
    revoked_at        BIGINT,
    revocation_reason TEXT,
    superseded_by     TEXT
);
CREATE INDEX certificates_hostname ON certificates (hostname);
CREATE INDEX certificates_psk_hash ON certificates (psk_hash);
CREATE INDEX certificates_not_after ON certificates (not_after);

CREATE TABLE audit (
    id       BIGSERIAL PRIMARY KEY,
    at       BIGINT NOT NULL,
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
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    crl_number BIGINT NOT NULL
);
INSERT INTO crl_state (id, crl_number) VALUES (1, 0);
