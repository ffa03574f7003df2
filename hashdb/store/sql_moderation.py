"""The SQL of moderation and the audit trail: changes of status, feedback and its
tally, the review queue, and reading events as each viewer may see them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from hashdb.errors import Conflict, NotFound
from hashdb.models import (
    INDEXED_STATUSES,
    Event,
    EventQuery,
    Feedback,
    MediaRecord,
    MediaStatus,
    NewEvent,
    Tally,
)
from hashdb.store.sql_base import SqlBase

# Kinds of event that change a media's state: the members who gave feedback on a
# media see these in their own events.
STATE_KINDS = ("media_approved", "media_rejected", "media_disputed", "media_reinstated",
               "media_disabled", "media_withdrawn")
# Matches are the matcher's own history: not shown to the contributor.
PRIVATE_KINDS = ("match", "candidate")


class ModerationQueries(SqlBase):
    def set_status(
        self,
        media_id: int,
        status: MediaStatus,
        event: NewEvent,
        *,
        expect: frozenset[MediaStatus] | None = None,
        labels: tuple[str, ...] | None = None,
        settle_feedback: bool = False,
    ) -> MediaRecord:
        """Moves a media to `status` (and `labels`, when given), appending to the change
        log what enters or leaves the indexes (or changes in them) and `event` to the
        trail, in one transaction. With `expect`, a media in another status is refused
        (Conflict): two racing decisions cannot both apply. `settle_feedback`: the
        feedback given so far is settled (a resolution), so only later feedback counts."""
        with self._write(change_lock=True) as db:
            row = db.execute(self._sql("SELECT status, labels FROM media WHERE id = ?"),
                             (media_id,)).fetchone()
            if row is None:
                raise NotFound(f"no media {media_id}", media_id=media_id)
            old = MediaStatus(row[0])
            old_labels = tuple(self._json(row[1]))
            if expect is not None and old not in expect:
                raise Conflict(f"media {media_id} is {old.value}", media_id=media_id,
                               status=old.value, expected=sorted(s.value for s in expect))
            new_labels = old_labels if labels is None else labels
            if old != status or new_labels != old_labels or settle_feedback:
                at = self._now()
                db.execute(
                    self._sql("UPDATE media SET status = ?, labels = ?, updated_at = ? "
                              "WHERE id = ?"),
                    (status.value, self._labels_param(new_labels), at, media_id),
                )
                if settle_feedback:
                    db.execute(
                        self._sql("UPDATE media SET feedback_floor = (SELECT coalesce(max(id), 0)"
                                  " FROM feedback) WHERE id = ?"), (media_id,))
                was, now_indexed = old in INDEXED_STATUSES, status in INDEXED_STATUSES
                # In or out of the indexes; or, staying in with another status or other
                # labels, an 'update': replicas must forget what they cached of it.
                op = ("add" if now_indexed else "remove") if was != now_indexed else (
                    "update" if now_indexed and (old != status or new_labels != old_labels)
                    else None)
                if op is not None:
                    db.execute(
                        self._sql("INSERT INTO change (op, signal_id, type, value) "
                                  "SELECT ?, id, type, value FROM signal WHERE media_id = ? "
                                  "ORDER BY id"),
                        (op, media_id),
                    )
                details: dict[str, Any] = {"from": old.value, "to": status.value,
                                           "labels": list(new_labels), **event.details}
                if new_labels != old_labels:
                    details["labels_before"] = list(old_labels)
                self._insert_events(db, [replace(event, media_id=media_id, details=details)],
                                    at)
        record = self.get_media(media_id)
        assert record is not None
        return record

    def _labels_param(self, labels: tuple[str, ...]) -> Any:
        """Labels as this database stores them (JSON text; PostgreSQL wraps it)."""
        return json.dumps(list(labels))

    # feedback ----------------------------------------------------------------------
    def _tally(self, db: Any, media_id: int) -> Tally:
        """Each member's latest verdict since the media's last resolution, its
        contributor's own left out."""
        rows = db.execute(
            self._sql(
                "SELECT f.verdict, count(*) FROM feedback f JOIN media md ON md.id = f.media_id "
                "WHERE f.media_id = ? AND f.id > md.feedback_floor "
                "AND f.member_id <> md.member_id AND f.id = (SELECT max(g.id) FROM feedback g "
                "WHERE g.media_id = f.media_id AND g.member_id = f.member_id) "
                "GROUP BY f.verdict"
            ),
            (media_id,),
        ).fetchall()
        counts = {str(v): int(n) for v, n in rows}
        return Tally(counts.get("agree", 0), counts.get("disagree", 0))

    def add_feedback(
        self, media_id: int, verdict: str, reason: str | None,
        labels: tuple[str, ...] | None, event: NewEvent,
    ) -> Tally:
        """Records a member's feedback (the actor of `event`) and returns the standing
        tally, in one transaction."""
        at = self._now()
        with self._write() as db:
            db.execute(
                self._sql("INSERT INTO feedback (media_id, member_id, verdict, reason, labels, "
                          "created_at) VALUES (?, ?, ?, ?, ?, ?)"),
                (media_id, event.member_id, verdict, reason,
                 None if labels is None else self._labels_param(labels), at),
            )
            self._insert_events(db, [event], at)
            return self._tally(db, media_id)

    def feedback_of(self, media_id: int, member_id: int | None = None) -> list[Feedback]:
        sql = ("SELECT f.id, f.media_id, m.name, m.id, f.verdict, f.reason, f.labels, "
               "f.created_at FROM feedback f JOIN member m ON m.id = f.member_id "
               "WHERE f.media_id = ? ")
        args: list[Any] = [media_id]
        if member_id is not None:
            sql += "AND f.member_id = ? "
            args.append(member_id)
        with self._read() as db:
            rows = db.execute(self._sql(sql + "ORDER BY f.id"), args).fetchall()
        return [
            Feedback(int(i), int(mid), str(name), int(member), str(verdict), reason,
                     None if labels is None else tuple(self._json(labels)), self._time(at))
            for i, mid, name, member, verdict, reason, labels, at in rows
        ]

    def media_with_status(self, status: MediaStatus, after: int, limit: int
                          ) -> list[MediaRecord]:
        """Media in one status, in id order after a cursor (the review queue)."""
        with self._read() as db:
            ids = [int(r[0]) for r in db.execute(
                self._sql("SELECT id FROM media WHERE status = ? AND id > ? ORDER BY id LIMIT ?"),
                (status.value, after, limit))]
        return [r for r in (self.get_media(i) for i in ids) if r is not None]

    def count_status(self, status: MediaStatus) -> int:
        with self._read() as db:
            row = db.execute(self._sql("SELECT count(*) FROM media WHERE status = ?"),
                             (status.value,)).fetchone()
        return int(row[0]) if row else 0

    def member_knows_media(self, member_id: int, media_id: int) -> bool:
        """Whether a member has met this media: matched it, or gave feedback on it."""
        with self._read() as db:
            row = db.execute(
                self._sql("SELECT 1 FROM event WHERE media_id = ? AND member_id = ? "
                          "AND kind IN ('match', 'candidate', 'feedback') LIMIT 1"),
                (media_id, member_id),
            ).fetchone()
        return row is not None

    # audit trail -----------------------------------------------------------------------
    def log_events(self, events: Sequence[NewEvent]) -> None:
        if events:
            with self._write() as db:
                self._insert_events(db, events)

    def events(self, query: EventQuery) -> list[Event]:
        """Events after a cursor, in id order. A viewer sees three kinds of event
        (its own acts; what concerns it, but others' matches; decisions on media it
        gave feedback on): each is read in id order from its own index and the three
        are merged, so a page costs its size, not the length of the trail."""
        filters, fargs = "", list[object]()
        if query.kinds:
            filters += "AND e.kind IN (" + ",".join("?" * len(query.kinds)) + ") "
            fargs += sorted(query.kinds)
        if query.media_id is not None:
            filters += "AND e.media_id = ? "
            fargs.append(query.media_id)
        if query.member is not None:
            filters += "AND e.member_id = (SELECT id FROM member WHERE name = ?) "
            fargs.append(query.member)
        if query.start is not None:
            filters += "AND e.at >= ? "
            fargs.append(self._time_param(query.start))
        if query.end is not None:
            filters += "AND e.at < ? "
            fargs.append(self._time_param(query.end))
        branches: list[tuple[str, list[object]]] = [("", [])]
        if query.viewer_id is not None:
            private = ", ".join(f"'{k}'" for k in PRIVATE_KINDS)
            state = ", ".join(f"'{k}'" for k in STATE_KINDS)
            v = query.viewer_id
            branches = [
                ("AND e.member_id = ? ", [v]),
                (f"AND e.owner_id = ? AND e.kind NOT IN ({private}) ", [v]),
                (f"AND e.kind IN ({state}) AND e.media_id IN "
                 "(SELECT f.media_id FROM feedback f WHERE f.member_id = ?) ", [v]),
            ]
        parts, args = list[str](), list[object]()
        for i, (where, wargs) in enumerate(branches):
            parts.append(f"SELECT id FROM (SELECT e.id FROM event e WHERE e.id > ? {where}"
                         f"{filters}ORDER BY e.id LIMIT ?) AS b{i}")
            args += [query.after, *wargs, *fargs, query.limit]
        sql = (
            "SELECT e.id, e.at, e.kind, m.name, e.media_id, e.details, o.name, e.key_id "
            "FROM event e LEFT JOIN member m ON m.id = e.member_id "
            "LEFT JOIN member o ON o.id = e.owner_id "
            f"WHERE e.id IN ({' UNION '.join(parts)}) ORDER BY e.id LIMIT ?"
        )
        args.append(query.limit)
        with self._read() as db:
            rows = db.execute(self._sql(sql), args).fetchall()
        return [
            Event(int(i), self._time(at), kind, name, None if mid is None else int(mid),
                  self._json(details), owner, key_id)
            for i, at, kind, name, mid, details, owner, key_id in rows
        ]

    def _time_param(self, iso: str) -> Any:
        """An ISO time as this database compares it."""
        return iso
