-- Repeated refusals from one address fold into one audit row (see
-- ca-server/src/rejection_log.rs): how many times it happened, and when last.
ALTER TABLE audit ADD COLUMN repeat_count BIGINT NOT NULL DEFAULT 1;
ALTER TABLE audit ADD COLUMN last_at BIGINT;
