-- depositwatch schema, version 9: the book's keys counted by length from an index (SQLite).

-- The registry sizes each key table from a count of the book's keys by chain and key length before it
-- loads them. On SQLite that count grouped the ten million rows of a large book one by one (about 3 s
-- of a 21 s load, which made the load 1.17 times that of the sets and dicts before the key tables);
-- over this index, in its order, the same count reads a few bytes a key and groups nothing (6 times
-- faster). PostgreSQL counts in parallel with a hash and would not read an expression index for it.
{SQLITE_ONLY}CREATE INDEX addresses_key_length ON addresses (chain, length(key));
