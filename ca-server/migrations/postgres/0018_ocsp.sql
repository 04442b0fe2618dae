-- OCSP responder certificates and their keys (issue 18), one row per
-- responder; every replica signs with the newest for its intermediate.
-- wrapped_key: AES-256-GCM under a key derived from the intermediate's key
-- (ca-server/src/pki/ocsp.rs), so the store alone does not open it.
CREATE TABLE ocsp_responders (
    serial              TEXT   PRIMARY KEY, -- the responder certificate's, hex
    intermediate_sha256 BYTEA  NOT NULL,
    created_at          BIGINT NOT NULL,
    not_before          BIGINT NOT NULL,
    not_after           BIGINT NOT NULL,
    cert_der            BYTEA  NOT NULL,
    wrapped_key         BYTEA  NOT NULL
);
CREATE INDEX ocsp_responders_newest ON ocsp_responders (intermediate_sha256, not_after);
