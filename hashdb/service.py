"""The Service: the runtime that holds the store and the indexes, and the parts
that do the work. The CLI, the API and the tests build it.

Routes and commands call the parts (`members`, `contributions`, `matcher`,
`moderation`, `audit`, and the `visibility` rules for what a caller sees) and
the runtime methods here, nothing else; every rule (roles, quality, isolation,
audit) lives in the parts, so it holds whatever the entry point.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from hashdb.audit import AuditTrail
from hashdb.budget import DecodeBudget
from hashdb.contributions import Contributions
from hashdb.errors import StoreUnavailable
from hashdb.index.base import index_for
from hashdb.index.follower import IndexFactory, IndexFollower
from hashdb.matcher import Matcher
from hashdb.members import Members, require_role
from hashdb.models import Caller, Change, Role
from hashdb.moderation import Moderation
from hashdb.settings import Settings
from hashdb.signals import SIGNAL_TYPES, Signal
from hashdb.store import Store, open_store
from hashdb.taxonomy import Taxonomy
from hashdb.visibility import Visibility

log = logging.getLogger(__name__)


class Service:
    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        index_factory: IndexFactory = index_for,
    ) -> None:
        self.settings = settings
        self.store = store or open_store(settings.database_url, settings.data_dir)
        self.follower = IndexFollower(self.store, index_factory)
        self._cpu = threading.BoundedSemaphore(settings.cpu_workers)
        self.decode_budget = DecodeBudget(settings.decode_memory_bytes,
                                          settings.decode_wait_seconds)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.loaded_from: str | None = None
        self.taxonomy = Taxonomy.load(settings.taxonomy_file)
        self.visibility = Visibility(settings.contributor_names, self.store.store_id)
        self.members = Members(self.store, settings.key_cache_seconds)
        self.contributions = Contributions(settings, self.store, self.hash_media, self._follow,
                                           self.taxonomy, self.visibility)
        self.matcher = Matcher(settings, self.store, self.follower,
                               lambda data: self.hash_media(data, query=True),
                               self.taxonomy, self.visibility)
        self.moderation = Moderation(settings, self.store, self.taxonomy, self.visibility,
                                     self._follow)
        # What matching caches of the hits is forgotten as the change log moves on;
        # the audit events it held through an outage are written once the store is back.
        self.follower.on_change.append(self.matcher.forget)
        self.follower.after_poll.append(self.matcher.flush_events)
        self.audit = AuditTrail(self.store)

    # lifecycle -------------------------------------------------------------
    def start(self, poll: bool = True) -> None:
        """Migrate, fill the indexes (snapshot plus change log, or a rebuild), and
        follow changes from other processes. Blocks until ready."""
        self.store.migrate()
        started = time.monotonic()
        for st in SIGNAL_TYPES.values():
            st.warm_up()  # the first upload does not wait for a model to load
        how = self.follower.load(self.snapshot_dir)
        log.info("indexes ready from %s in %.1f s: %s", how, time.monotonic() - started,
                 self.follower.sizes())
        self.loaded_from = how
        if poll and self._poller is None:
            self._poller = threading.Thread(
                target=self.follower.run_polling,
                args=(self.settings.index_poll_seconds, self._stop, self.snapshot_dir,
                      self.settings.snapshot_every_changes),
                name="hashdb-index-follower",
                daemon=True,
            )
            self._poller.start()

    @property
    def snapshot_dir(self) -> Path | None:
        if not self.settings.index_snapshots:
            return None
        return self.settings.data_dir / "index-snapshot"

    def close(self) -> None:
        self._stop.set()
        self.follower.wake()
        if self._poller is not None:
            self._poller.join(timeout=30)
            self._poller = None
        if self.ready and self.snapshot_dir and self.follower.changes_since_snapshot:
            try:
                self.follower.save_snapshot(self.snapshot_dir)
            except (OSError, StoreUnavailable):
                log.exception("could not save the index snapshot")
        self.matcher.flush_events()
        if len(self.matcher.pending_events):
            log.error("%d audit events held during a database outage are lost at shutdown",
                      len(self.matcher.pending_events))
        self.store.close()

    @property
    def ready(self) -> bool:
        return self.follower.ready

    def _follow(self) -> None:
        # After our own write, so that it is matchable on the very next request.
        # A service that was never started (CLI import) keeps no index to update.
        if self.follower.ready:
            try:
                self.follower.sync()
            except StoreUnavailable:
                # The write is committed: acknowledge it. The poller catches up (and
                # this process matches it) once the store answers again.
                log.warning("could not follow our own write: the store is unreachable")

    # hashing -------------------------------------------------------------------
    def hash_media(
        self, data: bytes, types: str | None = None, *, query: bool = False
    ) -> tuple[str, list[Signal]]:
        """The signals of a file (to store, or with `query` to look up), computed on
        one of the bounded CPU workers once the decode budget admits its memory."""
        from hashdb.hashing import hash_media

        wanted = SIGNAL_TYPES.parse_names(types)
        return hash_media(data, wanted, self.settings.media_limits(), query=query,
                          budget=self.decode_budget, worker=self._cpu)

    # logs ------------------------------------------------------------------------
    def changes(self, caller: Caller, after: int = 0, limit: int = 1000) -> list[Change]:
        """The change log, for export and replication: operators only."""
        require_role(caller, Role.ADMIN)
        return self.store.changes(after, max(1, min(limit, 10_000)))
