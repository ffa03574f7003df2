"""The source of truth: members, keys, media, signals, the change log and the event log."""

from hashdb.store.base import Store, open_store

__all__ = ["Store", "open_store"]
