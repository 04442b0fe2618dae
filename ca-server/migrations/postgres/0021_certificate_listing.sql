-- Listings (`cert list`, `--expiring`, the expiring-host counts of /metrics)
-- read only these columns. As one index led by not_after they are read
-- without the table rows, which carry the DER: on a store of 1 M
-- certificates a listing of the 117 k expiring within a week took 1.4-2 s
-- reading table pages scattered over the whole file, and 0.2 s from this
-- index. New certificates' not_after sits at the index's right edge, so
-- inserts stay appends. It starts with not_after, so it serves every query
-- the index it replaces served.
--
-- certificates_psk_hash goes: its only reader (the idempotent retry,
-- `hostname = $1 AND psk_hash = $2`) finds a host's few rows through the
-- hostname index, and a random 32-byte key put every issuance on a random
-- page of it, one more page to write and checkpoint per certificate on a
-- big store.
DROP INDEX certificates_psk_hash;
DROP INDEX certificates_not_after;
CREATE INDEX certificates_listing ON certificates (
    not_after, issued_at, serial, hostname, kind, not_before,
    revoked_at, revocation_reason, superseded_by, public_key_sha256
);
