"""A TRON-shaped chain for tests: real protobuf encodings, txIDs, trie roots and block ids."""
