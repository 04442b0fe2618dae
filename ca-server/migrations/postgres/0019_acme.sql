-- ACME (RFC 8555) with the one-time PSK as External Account Binding.
-- The PSK sealed under the CA's own secret (data dir, psk-seal.key,
-- AES-256-GCM, the hostname and psk_hash as associated data): the store alone
-- cannot give the HMAC key back. NULL for PSKs added before this migration
-- (they still work for /v1/sign, not for ACME).
ALTER TABLE psks ADD COLUMN psk_sealed BYTEA;

-- An account: the key that owns it and the grant its PSK carried.
CREATE TABLE acme_accounts (
    id           TEXT PRIMARY KEY NOT NULL, -- random, in the account URL
    thumbprint   TEXT NOT NULL UNIQUE,      -- RFC 7638 SHA-256, base64url
    jwk          TEXT NOT NULL,             -- the account public key (JSON)
    hostname     TEXT NOT NULL,             -- the PSK's hostname (EAB kid)
    allowed_sans TEXT NOT NULL,             -- JSON array: the PSK's extra names
    contact      TEXT NOT NULL,             -- JSON array
    status       TEXT NOT NULL,             -- valid | deactivated
    created_at   BIGINT NOT NULL
);
CREATE INDEX acme_accounts_hostname ON acme_accounts (hostname);

-- An order; its authorizations are derived from it (pre-validated).
CREATE TABLE acme_orders (
    id          TEXT PRIMARY KEY NOT NULL,
    account_id  TEXT NOT NULL,
    identifiers TEXT NOT NULL,              -- JSON array of names
    status      TEXT NOT NULL,              -- ready | valid | invalid
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    serial      TEXT                        -- the certificate, once finalized
);
CREATE INDEX acme_orders_account ON acme_orders (account_id);

-- Replay-Nonces used (edge/acme/nonce.rs: nonces are HMAC-tagged, not
-- stored when handed out): a nonce is good once, on any replica, until it
-- would have expired anyway.
CREATE TABLE acme_nonces (
    nonce      TEXT PRIMARY KEY NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX acme_nonces_expires_at ON acme_nonces (expires_at);

-- Which psk-seal.key the store's sealed PSKs are under (SHA-256 of a label
-- and the key, base64url: names the key, reveals nothing). The first
-- process with a key claims the store; a replica or CLI with another key
-- is told to copy the right one (pki/psk_seal.rs).
CREATE TABLE psk_seal_key (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    key_id TEXT NOT NULL
);
