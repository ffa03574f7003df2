"""Crash cycles against a real `hashdb serve` process, shared by the short test
(tests/test_crash_cycles.py) and the long script (benchmarks/crash_cycles.py).

A cycle: client threads contribute batches (POST /v1/hashes) and withdraw some of
what they contributed (DELETE /v1/media/{id}), each recording exactly what the
server acknowledged; at a chosen moment the server (or PostgreSQL) is killed with
SIGKILL; then `hashdb check` runs on what the crash left, the server restarts,
and every acknowledged fact is verified over HTTP:

- every acknowledged item is matchable, under the media id it was given;
- no acknowledged withdrawal is matchable;
- a request that got no answer (in doubt) took effect whole or not at all.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from crash_processes import CheckResult, DatabaseCrash, Deployment, ServerProcess

LABELS = ["terrorism"]
# Queries per verification request: well under the batch limit and any body cap.
VERIFY_BATCH = 2_000

Outcome = Literal["ok", "refused", "doubt"]


# what the clients were told ------------------------------------------------------------
@dataclass
class Media:
    media_id: Any  # as the API gave it: the tests never assume its form
    signals: list[tuple[str, str]]
    state: Literal["live", "withdrawn", "withdraw_in_doubt"] = "live"


@dataclass
class Ledger:
    """Everything the server acknowledged, and everything it was asked without an
    answer. Shared by the client threads."""

    media: dict[Any, Media] = field(default_factory=dict)
    doubtful: list[list[tuple[str, str]]] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    last_ack: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acknowledged_items(self) -> int:
        return sum(len(m.signals) for m in self.media.values())

    def count(self, state: str) -> int:
        return sum(1 for m in self.media.values() if m.state == state)


def _classify(call: Callable[[], httpx.Response], ledger: Ledger) -> tuple[Outcome, Any]:
    """What a request did, as far as the client can know."""
    try:
        response = call()
    except (httpx.ConnectError, httpx.ConnectTimeout):
        ledger.answers["connection refused"] += 1
        return "refused", None  # nothing was sent
    except httpx.TransportError as exc:
        ledger.answers[type(exc).__name__] += 1
        return "doubt", None  # sent, no answer: it may or may not have happened
    ledger.answers[str(response.status_code)] += 1
    if response.status_code == 200:
        return "ok", response.json()
    if response.status_code == 429:
        # Refused before any work; wait as told (bounded: a test must not hang).
        time.sleep(min(float(response.headers.get("retry-after", "0.2") or 0.2), 2.0))
        return "refused", None
    if response.status_code >= 500:
        # E.g. 503 while PostgreSQL is away: the commit may have happened before the
        # connection died. Back off as a client would, rather than pile up doubts.
        time.sleep(min(float(response.headers.get("retry-after", "0.1") or 0.1), 1.0))
        return "doubt", None
    raise AssertionError(f"unexpected answer {response.status_code}: {response.text[:500]}")


class Contributor(threading.Thread):
    """Contributes batches and withdraws some of what it contributed, until stopped."""

    def __init__(self, url: str, key: str, ledger: Ledger, stop: threading.Event, seed: int,
                 batch_items: int, withdraw_share: float) -> None:
        super().__init__(name=f"contributor-{seed}", daemon=True)
        self.url, self.key, self.ledger, self.stop = url, key, ledger, stop
        self.rng = random.Random(seed)
        self.seed = seed
        self.batch_items = batch_items
        self.withdraw_share = withdraw_share
        self.own: list[Any] = []  # live media ids this thread may withdraw
        self.error: BaseException | None = None
        self._batches = 0

    def run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=30,
                              headers={"Authorization": f"Bearer {self.key}"}) as client:
                while not self.stop.is_set():
                    if self.own and self.rng.random() < self.withdraw_share:
                        self._withdraw(client)
                    else:
                        self._contribute(client)
        except BaseException as exc:  # reported by the cycle, not lost in a thread
            self.error = exc

    def _items(self) -> list[dict[str, Any]]:
        """Fresh random values: single PDQ or MD5 hashes, and media of several signals
        (a media key), whose withdrawal removes them all at once."""
        items: list[dict[str, Any]] = []
        while len(items) < self.batch_items:
            self._batches += 1
            if self.rng.random() < 0.25:
                key = f"{self.seed}-{self._batches}"
                for t, n in (("pdq", 32), ("pdq", 32), ("md5", 16)):
                    items.append({"type": t, "value": self.rng.randbytes(n).hex(),
                                  "labels": LABELS, "media_key": key})
            else:
                t, n = ("pdq", 32) if self.rng.random() < 0.8 else ("md5", 16)
                items.append({"type": t, "value": self.rng.randbytes(n).hex(),
                              "labels": LABELS})
        return items

    def _contribute(self, client: httpx.Client) -> None:
        items = self._items()
        outcome, body = _classify(lambda: client.post("/v1/hashes", json={"items": items}),
                                  self.ledger)
        signals = [(i["type"], i["value"]) for i in items]
        if outcome == "refused":
            time.sleep(0.05)  # the server is down or busy: do not spin
            return
        with self.ledger.lock:
            if outcome == "doubt":
                self.ledger.doubtful.append(signals)
                return
            for item, answer in zip(signals, body["items"], strict=True):
                mid = answer["media_id"]
                media = self.ledger.media.get(mid)
                if media is None:
                    media = self.ledger.media[mid] = Media(mid, [])
                    self.own.append(mid)
                media.signals.append(item)
            self.ledger.last_ack = time.monotonic()

    def _withdraw(self, client: httpx.Client) -> None:
        mid = self.own.pop(self.rng.randrange(len(self.own)))
        outcome, _ = _classify(lambda: client.delete(f"/v1/media/{mid}"), self.ledger)
        with self.ledger.lock:
            if outcome == "ok":
                self.ledger.media[mid].state = "withdrawn"
            elif outcome == "doubt":
                self.ledger.media[mid].state = "withdraw_in_doubt"
            else:
                self.own.append(mid)  # never reached the server: still live
        if outcome == "refused":
            time.sleep(0.05)


# verification -----------------------------------------------------------------------
@dataclass
class Verification:
    acknowledged_items: int = 0
    missing: list[tuple[Any, str, str]] = field(default_factory=list)
    withdrawn: int = 0
    withdrawn_matchable: list[tuple[Any, str, str]] = field(default_factory=list)
    withdraw_doubt_kept: int = 0
    withdraw_doubt_gone: int = 0
    doubtful_applied: int = 0
    doubtful_absent: int = 0
    partial: list[str] = field(default_factory=list)  # requests that took effect in part

    @property
    def ok(self) -> bool:
        return not (self.missing or self.withdrawn_matchable or self.partial)


def matched_media(client: httpx.Client, signals: list[tuple[str, str]]) -> list[set[Any]]:
    """For each (type, value), the media ids it matches exactly."""
    out: list[set[Any]] = []
    for lo in range(0, len(signals), VERIFY_BATCH):
        chunk = signals[lo : lo + VERIFY_BATCH]
        queries = [{"id": str(i), "type": t, "value": v} for i, (t, v) in enumerate(chunk)]
        for _ in range(100):
            r = client.post("/v1/match/batch", params={"max_distance": 0},
                            json={"queries": queries})
            if r.status_code != 429:
                break
            time.sleep(min(float(r.headers.get("retry-after", "0.5") or 0.5), 5.0))
        r.raise_for_status()
        results = {res["id"]: res for res in r.json()["results"]}
        out += [{m["media_id"] for m in results[str(i)]["matches"]} for i in range(len(chunk))]
    return out


def verify(url: str, key: str, ledger: Ledger) -> Verification:
    """Every acknowledged fact, checked over HTTP against the server now running."""
    media = list(ledger.media.values())
    signals = [s for m in media for s in m.signals]
    doubtful = [s for batch in ledger.doubtful for s in batch]
    with httpx.Client(base_url=url, timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as client:
        found = iter(matched_media(client, signals + doubtful))
        v = Verification(acknowledged_items=len(signals))
        for m in media:
            hits = [m.media_id in next(found) for _ in m.signals]
            if m.state == "live":
                v.missing += [(m.media_id, t, val)
                              for (t, val), hit in zip(m.signals, hits, strict=True) if not hit]
            elif m.state == "withdrawn":
                v.withdrawn += 1
                v.withdrawn_matchable += [(m.media_id, t, val) for (t, val), hit
                                          in zip(m.signals, hits, strict=True) if hit]
            elif all(hits):
                v.withdraw_doubt_kept += 1
            elif not any(hits):
                v.withdraw_doubt_gone += 1
            else:
                v.partial.append(f"withdrawal of media {m.media_id}: {sum(hits)} of "
                                 f"{len(hits)} signals still matchable")
        for batch in ledger.doubtful:
            present = sum(bool(next(found)) for _ in batch)
            if present == len(batch):
                v.doubtful_applied += 1
            elif present == 0:
                v.doubtful_absent += 1
            else:
                v.partial.append(f"contribution of {len(batch)} items: {present} matchable")
    return v


# one cycle ----------------------------------------------------------------------------
@dataclass
class CycleResult:
    cycle: int
    killed: str  # "server" or "postgres"
    moment: str
    new_items: int
    verification: Verification
    check: CheckResult
    integrity: str
    restart_seconds: float
    loaded_from: str
    withdrawn: int
    doubtful: int
    answers: dict[str, int]
    thread_errors: list[str]

    @property
    def ok(self) -> bool:
        return (self.verification.ok and self.check.returncode == 0
                and self.integrity in ("ok", "n/a") and not self.thread_errors)

    def row(self) -> dict[str, object]:
        v = self.verification
        replayed = self.check.replayed
        return {
            "cycle": self.cycle, "killed": self.killed, "moment": self.moment,
            "acked items": v.acknowledged_items, "new": self.new_items,
            "withdrawn": self.withdrawn,
            "in doubt": f"{self.doubtful} ({v.doubtful_applied} applied)",
            "restart s": round(self.restart_seconds, 2), "server loaded": self.loaded_from,
            "check loaded": self.check.report.get("loaded_from", "?")
            + ("" if replayed is None else f"+{replayed}"),
            "check": "ok" if self.check.returncode == 0 else f"rc={self.check.returncode}",
            "integrity": self.integrity, "lost": len(v.missing),
            "withdrawn matchable": len(v.withdrawn_matchable), "partial": len(v.partial),
        }


class CrashRun:
    """Crash cycles on one deployment; the ledger spans every cycle."""

    def __init__(self, deployment: Deployment, workdir: Path, *, threads: int = 3,
                 seconds: float = 3.0, batch_items: int = 20, withdraw_share: float = 0.1,
                 seed: int = 0, database: DatabaseCrash | None = None) -> None:
        self.deployment = deployment
        self.threads, self.seconds, self.seed = threads, seconds, seed
        self.batch_items, self.withdraw_share = batch_items, withdraw_share
        self.database = database
        self.rng = random.Random(seed)
        self.ledger = Ledger()
        deployment.data_dir.mkdir(parents=True, exist_ok=True)
        self.key = deployment.create_key()
        self.server = ServerProcess(deployment, workdir / "server.log")
        self.first_start_seconds = self.server.start()

    def close(self) -> None:
        self.server.stop()

    def cycle(self, number: int, moment: str = "random", kill: str = "server") -> CycleResult:
        """Load, crash at `moment` ("random" or "after-snapshot"), then check, restart
        and verify. `kill`: "server" (kill -9 hashdb) or "postgres" (kill -9 every
        PostgreSQL process; hashdb keeps running and must recover by itself)."""
        before = self.ledger.acknowledged_items()
        stop = threading.Event()
        with self.ledger.lock:
            self.ledger.answers.clear()
        workers = [Contributor(self.server.url, self.key, self.ledger, stop,
                               self.seed * 1000 + number * 100 + i, self.batch_items,
                               self.withdraw_share) for i in range(self.threads)]
        for w in workers:
            w.start()
        described = self._wait_for(moment)
        if kill == "server":
            self.server.kill()
            stop.set()
            for w in workers:
                w.join(timeout=60)
            check = self.deployment.check()  # on what the crash left, as a start sees it
            integrity = self.deployment.sqlite_integrity()
            restart = self.server.start()
        else:
            restart, check, integrity = self._crash_database(stop, workers)
        verification = verify(self.server.url, self.key, self.ledger)
        return CycleResult(
            cycle=number, killed=kill, moment=described,
            new_items=self.ledger.acknowledged_items() - before, verification=verification,
            check=check, integrity=integrity, restart_seconds=restart,
            loaded_from=self.server.loaded_from if kill == "server" else "running",
            withdrawn=self.ledger.count("withdrawn"), doubtful=len(self.ledger.doubtful),
            answers=dict(self.ledger.answers),
            thread_errors=[f"{w.name}: {w.error!r}" for w in workers if w.error])

    def _wait_for(self, moment: str) -> str:
        if moment == "after-snapshot":
            # Kill as soon as a new snapshot is in place (and after some load), so
            # that the restart loads it and replays what came after, if anything.
            meta = self.deployment.snapshot_meta
            started = time.monotonic()
            time.sleep(0.3 * self.seconds)
            last = _read(meta)
            while time.monotonic() - started < 10 * self.seconds:
                now = _read(meta)
                if now and now != last:
                    return "after snapshot"
                last = now
                time.sleep(0.002)
            return "no new snapshot seen"
        started = time.monotonic()
        acked = self.ledger.last_ack
        wait = self.rng.uniform(0.2 * self.seconds, self.seconds)
        time.sleep(wait)
        # A cycle that acknowledged nothing yet (a slow start on a busy machine) would
        # prove nothing: wait for the first acknowledgement, within bounds.
        while self.ledger.last_ack == acked and time.monotonic() - started < 10 * self.seconds:
            time.sleep(0.01)
        return f"random {time.monotonic() - started:.1f}s"

    def _crash_database(self, stop: threading.Event,
                        workers: list[Contributor]) -> tuple[float, CheckResult, str]:
        """kill -9 PostgreSQL under load, keep the load on through the outage, start it
        again, and wait for the running server to acknowledge writes by itself."""
        assert self.database is not None, "no PostgreSQL to crash"
        postmaster = self.database.pid()
        self.database.kill()
        time.sleep(min(1.0, self.seconds))  # writes meet a dead database
        # A new postmaster refuses to start while the old pid exists, even as a zombie
        # that init has not reaped yet (here it reaps every ~2 s).
        deadline = time.monotonic() + 30
        while postmaster and Path(f"/proc/{postmaster}").exists() \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        crashed = time.monotonic()
        self.database.start()
        recovered = -1.0
        while time.monotonic() - crashed < 60:
            with self.ledger.lock:
                if self.ledger.last_ack > crashed:
                    recovered = self.ledger.last_ack - crashed
                    break
            time.sleep(0.05)
        stop.set()
        for w in workers:
            w.join(timeout=60)
        if recovered < 0:  # it did not recover by itself: say so, restart it, go on
            self.server.kill()
            self.server.start()
        return recovered, self.deployment.check(), self.deployment.sqlite_integrity()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""
