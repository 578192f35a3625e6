-- depositwatch schema, version 5: the address book's audit log.
--
-- One row per address changed by an import, an add, a revocation or a reinstatement, written in the
-- same transaction as the change itself, so the log and the book never disagree. Append-only: no
-- command or API call updates or deletes a row, and retention does not prune this table.
-- `actor` is `unix:<user>` for the command line, `token:<name>` for the HTTP API; `address` is the
-- normalised display form; `detail` is JSON (previous and new status, revocation time, the batch, the
-- file and its row count for an import).
CREATE TABLE address_audit (
    id      {SERIAL},
    at      BIGINT NOT NULL,
    actor   TEXT   NOT NULL,
    action  TEXT   NOT NULL CHECK (action IN ('import', 'add', 'revoke', 'reinstate')),
    chain   TEXT   NOT NULL,
    address TEXT   NOT NULL,
    owner   TEXT   NOT NULL DEFAULT '',
    reason  TEXT   NOT NULL DEFAULT '',
    detail  TEXT   NOT NULL
);
CREATE INDEX address_audit_by_address ON address_audit (chain, address, id);
