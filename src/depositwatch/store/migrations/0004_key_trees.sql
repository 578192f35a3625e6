-- depositwatch schema, version 4: key trees (BIP32 account keys, output descriptors) in the book.
--
-- One row per tree: a canonical descriptor on one chain and the index range first_index..last_index
-- (inclusive) it stands for. Its status, label, owner and revocation apply to every derived key.
CREATE TABLE key_trees (
    id          {SERIAL},
    chain       TEXT    NOT NULL,
    descriptor  TEXT    NOT NULL,          -- canonical form, checksum included
    script      TEXT    NOT NULL,          -- pkh, sh_wpkh, wpkh, tr, evm or tron
    network     TEXT,                      -- the Bitcoin network its addresses are written for
    first_index BIGINT  NOT NULL CHECK (first_index >= 0),
    last_index  BIGINT  NOT NULL CHECK (last_index < 2147483648),
    gap         BIGINT  NOT NULL DEFAULT 0 CHECK (gap >= 0),
    status      TEXT    NOT NULL CHECK (status IN ('active', 'revoked')),
    label       TEXT    NOT NULL DEFAULT '',
    owner       TEXT    NOT NULL DEFAULT '',
    revoked_at  BIGINT,
    reason      TEXT    NOT NULL DEFAULT '',
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    UNIQUE (chain, descriptor),
    CHECK (first_index <= last_index),
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);

-- The derivation cache: every key of every tree's range, so a restart loads keys instead of deriving
-- them again. A pkh() tree has two keys per index (its P2PKH script and the bare P2PK script).
CREATE TABLE tree_keys (
    tree_id BIGINT  NOT NULL REFERENCES key_trees (id),
    idx     INTEGER NOT NULL,
    key     {BLOB}  NOT NULL
);
CREATE INDEX tree_keys_by_key ON tree_keys (key);

-- Which tree and index a match hit (NULL for a plain address).
ALTER TABLE matches ADD COLUMN tree_id BIGINT;
ALTER TABLE matches ADD COLUMN tree_index BIGINT;
