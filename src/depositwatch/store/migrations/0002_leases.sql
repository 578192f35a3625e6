-- depositwatch schema, version 2: leadership by lease, with epoch fencing.
--
-- One row per lease ('chain:<name>', 'dispatcher'). The holder renews `expires_at` (database time,
-- unix seconds, never an instance's own clock) while its loop makes progress; once it has passed,
-- another instance may take the lease, and every takeover adds one to `epoch`. Each write of chain
-- state and each delivery state change checks, in its own transaction, that the row still carries the
-- writer's holder and epoch, so an instance that lost the lease (frozen, partitioned) writes nothing.
-- `session` names the holder's database session (PostgreSQL: backend pid and start time): when that
-- session is gone the holder is dead, and a standby need not wait for the expiry.
CREATE TABLE leases (
    name        TEXT   PRIMARY KEY,
    holder      TEXT   NOT NULL,
    epoch       BIGINT NOT NULL CHECK (epoch >= 1),
    expires_at  DOUBLE PRECISION NOT NULL,
    session     TEXT,
    acquired_at DOUBLE PRECISION NOT NULL
);

-- The lease epoch under which a delivery was last claimed for sending; marking it delivered or
-- failed needs the same epoch, so a dispatcher that lost the lease cannot record an outcome.
ALTER TABLE deliveries ADD COLUMN claim_epoch BIGINT;
