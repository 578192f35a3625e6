-- depositwatch schema, version 3: outbox retention.

-- The last revision of each alert whose messages retention removed from the outbox. A later message
-- of the same alert (a retraction after a deep reorg) takes the next revision, so it never reuses an
-- idempotency key a receiver has seen; and a replay does not announce again what was announced.
CREATE TABLE outbox_pruned (
    alert_id  TEXT    PRIMARY KEY,
    rev       INTEGER NOT NULL,
    pruned_at BIGINT  NOT NULL
);

-- Retention picks settled alerts by age.
CREATE INDEX outbox_by_alert_age ON outbox (alert_id, created_at);
CREATE INDEX matches_by_age ON matches (status, updated_at);

-- The first block each chain's live cursor recorded: what a backdated revocation can re-examine from
-- the store itself; earlier blocks need a replay. (Unknown for stores that followed before this.)
CREATE TABLE live_start (
    chain  TEXT   PRIMARY KEY,
    height BIGINT NOT NULL,
    time   BIGINT NOT NULL
);
