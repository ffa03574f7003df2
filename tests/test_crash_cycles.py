"""Crash cycles (short): a real `hashdb serve` killed with SIGKILL under contribution
and withdrawal, restarted, and checked: every acknowledged item present and
matchable, nothing acknowledged-withdrawn matchable, no request half-applied,
`hashdb check` exits 0, SQLite's integrity check ok. The long runs are
benchmarks/crash_cycles.py; the driver is tests/crash_support.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from crash_processes import Deployment
from crash_support import CrashRun, CycleResult
from pg_private import private_postgres
from postgres_schemas import postgres_schema


def table(results: list[CycleResult]) -> str:
    return "\n".join(str(r.row()) for r in results)


def assert_nothing_lost(results: list[CycleResult]) -> None:
    for r in results:
        v = r.verification
        assert not v.missing, f"acknowledged items lost: {v.missing[:5]}\n{table(results)}"
        assert not v.withdrawn_matchable, f"withdrawn items matchable: " \
                                          f"{v.withdrawn_matchable[:5]}\n{table(results)}"
        assert not v.partial, f"requests half-applied: {v.partial[:5]}"
        assert r.check.returncode == 0, r.check.output
        assert r.integrity in ("ok", "n/a"), r.integrity
        assert not r.thread_errors, r.thread_errors
        # Refusals are 503 (PostgreSQL away) at worst, never a server error.
        assert not [a for a in r.answers if a.startswith("5") and a != "503"], r.answers
        # Each cycle did work worth checking: new acknowledged items, and requests
        # in flight that the kill cut off.
        assert r.new_items > 0, table(results)
    last = results[-1]
    assert last.withdrawn > 0 and last.verification.acknowledged_items > 0, table(results)


def run_cycles(deployment: Deployment, workdir: Path, seed: int,
               moments: tuple[str, ...]) -> list[CycleResult]:
    run = CrashRun(deployment, workdir, threads=3, seconds=2.0, seed=seed)
    try:
        results = [run.cycle(n, moment) for n, moment in enumerate(moments, 1)]
        # A few changes after the last snapshot, which only the clean stop saves.
        items = [{"type": "md5", "value": f"{seed:02x}{i:030x}", "labels": ["terrorism"]}
                 for i in range(3)]
        assert httpx.post(f"{run.server.url}/v1/hashes", json={"items": items}, timeout=30,
                          headers={"Authorization": f"Bearer {run.key}"}).status_code == 200
    finally:
        run.close()
    assert_nothing_lost(results)
    # The kill that followed a fresh snapshot: the restart used it (plus the log).
    after = results[moments.index("after-snapshot")]
    assert after.moment == "after snapshot", table(results)
    assert after.loaded_from == "snapshot" and after.check.report["loaded_from"] == "snapshot"
    # A clean stop (SIGTERM) saves the snapshot: the check replays nothing and agrees.
    final = deployment.check()
    assert final.returncode == 0 and final.replayed == 0, final.output
    return results


def test_sqlite_survives_kill_9_under_writes(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path / "data")
    run_cycles(deployment, tmp_path, seed=9, moments=("random", "after-snapshot", "random"))
    assert deployment.sqlite_integrity() == "ok"


def test_postgresql_survives_the_server_killed_under_writes(tmp_path: Path) -> None:
    with postgres_schema() as url:
        run_cycles(Deployment(tmp_path / "data", url), tmp_path, seed=19,
                   moments=("after-snapshot", "random"))


def test_postgresql_itself_killed_under_writes(tmp_path: Path) -> None:
    """kill -9 of every PostgreSQL process (a private server: the shared one serves
    the rest of the suite) while the hashdb server keeps running: it must recover by
    itself once PostgreSQL is back, and nothing it acknowledged may be lost."""
    with private_postgres() as pg:
        run = CrashRun(Deployment(tmp_path / "data", pg.url), tmp_path, threads=3,
                       seconds=1.5, seed=29, database=pg)
        try:
            results = [run.cycle(n, "random", kill="postgres") for n in (1, 2)]
        finally:
            run.close()
        assert_nothing_lost(results)
        for r in results:
            assert r.restart_seconds >= 0, "the server did not recover by itself\n" \
                                           + run.server.log_tail()
        assert run.server.starts == 1  # never restarted: it recovered on its own
