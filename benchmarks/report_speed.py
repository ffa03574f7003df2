"""Transparency report speed: how long a report takes over a long audit trail.

A SQLite store gets N events shaped like a busy consortium's (one contribution
for every nine matches, a few disputes). Timed in the same run:

- baseline: reading the whole trail page by page (`Store.events`), as the report
  does, with nothing computed;
- the report for an admin (the whole consortium);
- the report for a member (its own events: the trail read through the member's
  three indexed views).

Prints events per second and each report's time over the baseline's.

    .venv/bin/python benchmarks/report_speed.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from hashdb.audit import PAGE, AuditTrail  # noqa: E402
from hashdb.models import Caller, EventQuery, NewEvent, Role  # noqa: E402
from hashdb.store.sqlite import SqliteStore  # noqa: E402

LABELS = ["terrorism/glorification", "child-sexual-abuse", "counterfeit-goods"]


def seed(store: SqliteStore, n: int) -> tuple[Caller, Caller]:
    ngo = store.create_member("ngo", True)
    platform_b = store.create_member("platform-b", False)
    batch: list[NewEvent] = []
    for i in range(n):
        label = [LABELS[i % 3]]
        if i % 10 == 0:
            batch.append(NewEvent("media_contributed", ngo.id, i, ngo.id, {
                "labels": label, "status": "active", "contributor_kind": "trusted_flagger",
                "media_type": "hashes"}))
        elif i % 1000 == 1:
            batch.append(NewEvent("media_disputed", platform_b.id, i - 1, ngo.id, {
                "from": "active", "to": "disputed", "labels": label, "agree": 0,
                "disagree": 2}))
        else:
            batch.append(NewEvent("match", platform_b.id, i - i % 10, ngo.id, {
                "signal_type": "pdq", "variant": "pdq", "distance": 4, "labels": label}))
        if len(batch) == 50_000:
            store.log_events(batch)
            batch = []
    store.log_events(batch)
    return (Caller(ngo, "bench", frozenset({Role.ADMIN})),
            Caller(platform_b, "bench", frozenset({Role.MATCHER})))


def read_all(store: SqliteStore) -> int:
    after = count = 0
    while page := store.events(EventQuery(after, PAGE)):
        count += len(page)
        after = page[-1].id
    return count


def timed(fn) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {platform.python_implementation()} "
          f"{platform.python_version()}, events: {args.events:,}")
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "trail.sqlite3")
        store.migrate()
        seconds, (admin, member) = timed(lambda: seed(store, args.events))  # type: ignore
        print(f"seeded in {seconds:.1f} s")
        trail = AuditTrail(store)
        base, count = timed(lambda: read_all(store))
        rows = [("baseline: read the trail", base, count)]
        for name, caller in (("report, admin", admin), ("report, member", member)):
            spent, report = timed(lambda c=caller: trail.report(c))  # type: ignore
            rows.append((name, spent, report.as_json()["matches"]["total"]))  # type: ignore
        store.close()
    print("\n| what | seconds | events/s | x baseline | check |\n|---|---|---|---|---|")
    for name, spent, check in rows:
        print(f"| {name} | {spent:.1f} | {args.events / spent:,.0f} | {spent / base:.2f} | "
              f"{check:,} |")


if __name__ == "__main__":
    main()
