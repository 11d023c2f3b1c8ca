"""Layers: deterministic tar, compression and hashing in one pass, and the rebuild cache."""
