-- depositwatch schema, version 6: blind spots (any token to a revoked address, poisoning).

-- What token contracts outside the configured list said about themselves (symbol(), decimals()),
-- asked once per chain and contract. `known` = 0: the contract reverted or answered something
-- unusable; `symbol` is then a placeholder and `decimals` 0 (amounts stay in base units).
CREATE TABLE token_metadata (
    chain      TEXT    NOT NULL,
    contract   TEXT    NOT NULL,
    symbol     TEXT    NOT NULL,
    decimals   INTEGER NOT NULL,
    known      INTEGER NOT NULL,
    fetched_at BIGINT  NOT NULL,
    PRIMARY KEY (chain, contract)
);

-- 0 for a token matched only because it touched a revoked address (not a configured token).
ALTER TABLE matches ADD COLUMN asset_listed INTEGER NOT NULL DEFAULT 1;
-- 1 for a zero or dust transfer to or from a revoked address (address poisoning): never paged.
ALTER TABLE matches ADD COLUMN poisoning INTEGER NOT NULL DEFAULT 0;
