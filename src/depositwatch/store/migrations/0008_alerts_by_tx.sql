-- depositwatch schema, version 8: alert matches by transaction.

-- A pending token transfer (recorded under its transaction and contract, before its log index is
-- known) is looked up by transaction among the alert matches when it is recorded, so a sighting read
-- from the pool just before its block was committed does not alert a second time under another id.
-- Partial: deposits, the bulk of the rows, are never looked up so and cost nothing here.
CREATE INDEX matches_alerts_by_tx ON matches (scope, txid) WHERE kind <> 'deposit';
