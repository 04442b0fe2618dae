-- Revocation and CRL publication (issue 4).
-- revocation_seq: bumped in the transaction of every revocation, so a server
-- sees in one cheap read that the published CRLs are behind the store.
ALTER TABLE crl_state ADD COLUMN revocation_seq BIGINT NOT NULL DEFAULT 0;

-- The newest signed CRL generation, served by every replica. Only ever
-- replaced by a higher generation (the intermediate CRL's number).
CREATE TABLE crl_published (
    id                BIGINT PRIMARY KEY CHECK (id = 1),
    generation        BIGINT NOT NULL,
    generated_at      BIGINT NOT NULL,
    revocation_seq    BIGINT NOT NULL, -- crl_state.revocation_seq the entries reflect
    next_dropout      BIGINT,          -- earliest not_after of a listed certificate
    revoked           BIGINT NOT NULL, -- how many certificates are listed
    intermediate      BYTEA NOT NULL,  -- DER, short validity (/v1/crl)
    intermediate_long BYTEA NOT NULL,  -- DER, long validity (Puppet agents)
    root              BYTEA            -- DER, the root's CRL, if one is available
);

CREATE INDEX certificates_revoked_at ON certificates (revoked_at) WHERE revoked_at IS NOT NULL;

-- Keys revoked as compromised are refused for good; this keeps the check cheap.
CREATE INDEX certificates_compromised_keys ON certificates (public_key_sha256)
    WHERE revocation_reason = 'keyCompromise';
