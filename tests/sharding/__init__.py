"""Sharded mode (docs/scaling.md)."""
