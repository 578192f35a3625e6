-- depositwatch schema, version 1. Written once for both backends: {BLOB} and {SERIAL} are
-- replaced per dialect (BLOB/BYTEA, INTEGER PRIMARY KEY AUTOINCREMENT/BIGSERIAL PRIMARY KEY).

CREATE TABLE addresses (
    chain       TEXT   NOT NULL,
    key         {BLOB} NOT NULL,           -- output script (Bitcoin) or 20 address bytes (EVM)
    address     TEXT   NOT NULL,           -- normalised text form
    type        TEXT   NOT NULL,
    status      TEXT   NOT NULL CHECK (status IN ('active', 'revoked')),
    label       TEXT   NOT NULL DEFAULT '',
    owner       TEXT   NOT NULL DEFAULT '',
    revoked_at  BIGINT,                    -- unix seconds
    reason      TEXT   NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (chain, key),
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);

-- One row, bumped in the same transaction as every address-book change, so a running daemon can
-- notice a change with one cheap query.
CREATE TABLE address_book_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO address_book_version (id, version) VALUES (1, 0);

-- What the store has seen of each chain: the EVM chain id or the Bitcoin genesis hash.
CREATE TABLE chain_identity (
    chain    TEXT PRIMARY KEY,
    identity TEXT NOT NULL
);

-- Where each follower stands. Live cursors are named 'live:<chain>', replay runs 'replay:<run id>'.
CREATE TABLE cursors (
    name        TEXT PRIMARY KEY,
    chain       TEXT   NOT NULL,
    height      BIGINT NOT NULL,
    hash        TEXT   NOT NULL,
    range_start BIGINT,
    range_stop  BIGINT,
    updated_at  BIGINT NOT NULL
);

-- Recent processed blocks of each cursor, to find the fork point of a reorg without the node.
CREATE TABLE blocks (
    cursor      TEXT   NOT NULL,
    height      BIGINT NOT NULL,
    hash        TEXT   NOT NULL,
    parent_hash TEXT   NOT NULL,
    time        BIGINT NOT NULL,
    PRIMARY KEY (cursor, height)
);

-- Every transfer that touched a watched address. scope is 'live' or 'replay:<run id>'.
CREATE TABLE matches (
    scope          TEXT   NOT NULL,
    id             TEXT   NOT NULL,
    chain          TEXT   NOT NULL,
    kind           TEXT   NOT NULL,
    status         TEXT   NOT NULL CHECK (status IN ('mempool', 'seen', 'confirmed', 'retracted')),
    asset_symbol   TEXT   NOT NULL,
    asset_contract TEXT,
    asset_decimals INTEGER NOT NULL,
    amount         TEXT   NOT NULL,
    from_address   TEXT,
    to_address     TEXT,
    key            {BLOB} NOT NULL,
    address        TEXT   NOT NULL,
    label          TEXT   NOT NULL,
    owner          TEXT   NOT NULL,
    revoked_at     BIGINT,
    txid           TEXT   NOT NULL,
    idx            BIGINT,
    block_height   BIGINT,
    block_hash     TEXT,
    block_time     BIGINT,
    first_seen     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (scope, id)
);
CREATE INDEX matches_by_block ON matches (scope, chain, block_height);
CREATE INDEX matches_by_status ON matches (scope, chain, status);

-- Deposits to active addresses: the records an exchange credits from, final at N confirmations.
CREATE VIEW deposits AS
    SELECT id, chain, asset_symbol, asset_contract, asset_decimals, amount, from_address, to_address,
           address, label, owner, txid, idx, block_height, block_hash, block_time, status,
           (status = 'confirmed') AS final, first_seen
    FROM matches WHERE scope = 'live' AND kind = 'deposit';

-- Bitcoin outputs that paid a revoked script: spending one is a sweep.
CREATE TABLE watched_outputs (
    scope         TEXT   NOT NULL,
    chain         TEXT   NOT NULL,
    txid          TEXT   NOT NULL,
    vout          BIGINT NOT NULL,
    script        {BLOB} NOT NULL,
    amount        BIGINT NOT NULL,
    height        BIGINT,                  -- NULL: found by scantxoutset, not by following
    spent_txid    TEXT,
    spent_height  BIGINT,
    PRIMARY KEY (scope, chain, txid, vout)
);

-- The outbox: one row per message to deliver. (alert_id, rev) is the idempotency key.
CREATE TABLE outbox (
    seq          {SERIAL},
    alert_id     TEXT   NOT NULL,
    rev          INTEGER NOT NULL,
    event        TEXT   NOT NULL,
    kind         TEXT   NOT NULL,
    severity     TEXT   NOT NULL,
    chain        TEXT   NOT NULL,
    order_key    TEXT   NOT NULL,          -- chain and address: messages of one address go in order
    block_height BIGINT,
    payload      TEXT   NOT NULL,          -- the JSON body, fixed when the message is made
    status       TEXT   NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'pending', 'delivered', 'dead', 'unrouted')),
    created_at   BIGINT NOT NULL,
    UNIQUE (alert_id, rev)
);
CREATE INDEX outbox_by_status ON outbox (status, seq);

-- Delivery state of each outbox message for each sink.
CREATE TABLE deliveries (
    outbox_seq      BIGINT NOT NULL REFERENCES outbox (seq),
    sink            TEXT   NOT NULL,
    order_key       TEXT   NOT NULL,
    status          TEXT   NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    last_error      TEXT,
    delivered_at    BIGINT,
    PRIMARY KEY (outbox_seq, sink)
);
CREATE INDEX deliveries_due ON deliveries (sink, status, next_attempt_at);
CREATE INDEX deliveries_order ON deliveries (sink, order_key, status, outbox_seq);
