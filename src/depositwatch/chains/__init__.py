"""Chain sources: turn a node's blocks into plain `Block` records."""
