-- OCSP responder certificates and their keys (issue 18), one row per
-- responder; every replica signs with the newest for its intermediate.
-- wrapped_key: AES-256-GCM under a key derived from the intermediate's key
-- (ca-server/src/pki/ocsp.rs), so the store alone does not open it.
CREATE TABLE ocsp_responders (
    serial              TEXT    PRIMARY KEY, -- the responder certificate's, hex
    intermediate_sha256 BLOB    NOT NULL,
    created_at          INTEGER NOT NULL,
    not_before          INTEGER NOT NULL,
    not_after           INTEGER NOT NULL,
    cert_der            BLOB    NOT NULL,
    wrapped_key         BLOB    NOT NULL
);
CREATE INDEX ocsp_responders_newest ON ocsp_responders (intermediate_sha256, not_after);
