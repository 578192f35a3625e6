-- depositwatch schema, version 7: parallel replay, a run's block range cut into shards.

-- One row per parallel replay run (its id is the replay run id: chain, range and node identity), with
-- how its range was cut. Every worker of the run, on this machine or another, reads it from here.
CREATE TABLE replay_runs (
    run_id       TEXT    PRIMARY KEY,
    chain        TEXT    NOT NULL,
    range_start  BIGINT  NOT NULL,
    range_stop   BIGINT  NOT NULL,
    shard_blocks BIGINT  NOT NULL CHECK (shard_blocks >= 1),
    send_alerts  INTEGER NOT NULL,
    created_at   BIGINT  NOT NULL
);

-- One row per shard: a contiguous sub-range with its own cursor (`replay:<run>:<shard>`). A worker
-- claims a shard by taking the lease of the same name (store/leases.py: holder, epoch, expiry in
-- database time) and commits its blocks under that lease's fence; `done_at` is set, fenced too, once
-- its last block is committed. `anchor_hash` is the parent of its first block as the node gave it,
-- `last_hash` its last block: where one shard ends the next must begin.
CREATE TABLE replay_shards (
    run_id       TEXT    NOT NULL,
    shard        INTEGER NOT NULL,
    first_height BIGINT  NOT NULL,
    last_height  BIGINT  NOT NULL,
    anchor_hash  TEXT,
    last_hash    TEXT,
    blocks       BIGINT  NOT NULL DEFAULT 0,
    transfers    BIGINT  NOT NULL DEFAULT 0,
    done_at      BIGINT,
    done_by      TEXT,
    PRIMARY KEY (run_id, shard)
);
CREATE INDEX replay_shards_open ON replay_shards (run_id, done_at, shard);
