-- Which CA a store belongs to: the root fingerprint of the data dir that
-- first served from it. Replicas (and a server whose intermediate was
-- rotated) share the root; a data dir of another CA is refused.
CREATE TABLE ca_identity (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    root_fingerprint TEXT NOT NULL
);
