"""`hashdb check`: it passes on a sound deployment, and names each kind of difference
between the store and the indexes a starting server would load."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hashdb.check import CheckReport, check_store
from hashdb.importing import HashItem
from hashdb.index.follower import IndexFollower
from hashdb.models import Role
from hashdb.service import Service
from hashdb.settings import Settings
from hashdb.store import Store
from postgres_schemas import postgres_schema


@dataclass
class Deployment:
    service: Service
    live: list[int]  # signal ids of live pdq signals
    withdrawn: list[int]  # signal ids of a withdrawn media's pdq signals
    live_media: int
    withdrawn_media: int

    @property
    def store(self) -> Store:
        return self.service.store

    @property
    def snapshot(self) -> Path:
        assert self.service.snapshot_dir is not None
        return self.service.snapshot_dir

    def check(self) -> CheckReport:
        return check_store(self.store, self.snapshot)

    def sql(self, statement: str, *args: object) -> None:
        """Tampering behind the service's back, as a bug or a bad restore would."""
        with self.store._write() as db:  # type: ignore[attr-defined]
            db.execute(self.store._sql(statement), args)  # type: ignore[attr-defined]


def contribute(service: Service, seed: int, n: int = 30) -> list[int]:
    """n single pdq media plus one media of pdq+md5; returns their media ids."""
    rng = np.random.default_rng(seed)
    caller = service.members.acting_as("m", [Role.CONTRIBUTOR])
    items = [HashItem("pdq", rng.bytes(32).hex(), ["terrorism"]) for _ in range(n)]
    items += [HashItem("pdq", rng.bytes(32).hex(), ["terrorism"], media_key=f"v{seed}"),
              HashItem("md5", rng.bytes(16).hex(), ["terrorism"], media_key=f"v{seed}")]
    return [o.media_id for o in service.contributions.contribute_hashes(caller, items)
            if o.media_id is not None]


def deploy(settings: Settings) -> Deployment:
    service = Service(settings)
    service.start(poll=False)
    service.store.create_member("m", True)
    media = contribute(service, 1)
    caller = service.members.acting_as("m", [Role.CONTRIBUTOR])
    service.contributions.withdraw(caller, media[-1])  # the pdq+md5 media
    service.follower.save_snapshot(service.snapshot_dir)  # type: ignore[arg-type]
    contribute(service, 2)  # after the snapshot: replayed from the change log

    def pdq_ids(media_id: int) -> list[int]:
        record = service.store.get_media(media_id)
        assert record is not None
        return [s.id for s in record.signals if s.value.type == "pdq"]

    return Deployment(service, [i for m in media[:3] for i in pdq_ids(m)],
                      pdq_ids(media[-1]), media[0], media[-1])


@pytest.fixture
def sqlite_deployment(tmp_path: Path) -> Iterator[Deployment]:
    d = deploy(Settings(data_dir=tmp_path))
    yield d
    d.service.close()


def differences(report: CheckReport, type_name: str) -> dict[str, tuple[int, tuple[int, ...]]]:
    found = next(t for t in report.types if t.signal_type == type_name)
    return {d.what: (d.count, d.signal_ids) for d in found.differences}


def test_a_sound_deployment_passes_from_its_snapshot_and_change_log(
        sqlite_deployment: Deployment) -> None:
    report = sqlite_deployment.check()
    assert report.ok, report.lines()
    assert report.loaded_from == "snapshot"
    assert report.snapshot_cursor is not None and report.cursor - report.snapshot_cursor == 32
    sizes = {t.signal_type: (t.in_store, t.in_index) for t in report.types}
    assert sizes["pdq"] == (61, 61) and sizes["md5"] == (1, 1)


def test_a_snapshot_that_drifted_from_the_store_is_named(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    follower = IndexFollower(d.store)
    assert follower.load(d.snapshot) == "snapshot"
    pdq = follower.indexes["pdq"]
    lost, back = d.live[0], d.withdrawn[0]
    pdq.remove(np.array([lost]))
    # A withdrawn signal back under its value, and an id under a value never stored.
    withdrawn = d.store.get_media(d.withdrawn_media)
    assert withdrawn is not None
    raw = next(s.value.raw for s in withdrawn.signals if s.id == back)
    pdq.add(np.array([back]), np.frombuffer(raw, np.uint8).reshape(1, 32))
    pdq.add(np.array([10**9]), np.full((1, 32), 7, np.uint8))
    follower.save_snapshot(d.snapshot)

    report = d.check()
    assert not report.ok and not report.change_log and not report.integrity
    assert differences(report, "pdq") == {
        "indexed in the store, not found in the index under their value": (1, (lost,)),
        "in the index, not indexed in the store": (1, (back,)),
        "entries the index holds under values the store does not know": (1, ()),
    }
    assert differences(report, "md5") == {}
    assert report.lines()[-1] == "FAILED"

    # Without the snapshot the start rebuilds from the change log, which is right.
    shutil.rmtree(d.snapshot)
    rebuilt = d.check()
    assert rebuilt.ok and rebuilt.loaded_from == "rebuild"


def test_a_change_log_that_disagrees_with_the_statuses_is_named(
        sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    # A status changed without its 'remove', and a 'remove' without a status change.
    d.sql("UPDATE media SET status = 'deleted' WHERE id = ?", d.live_media)
    d.sql("INSERT INTO change (op, signal_id, type, value) "
          "SELECT 'remove', id, type, value FROM signal WHERE id = ?", d.live[-1])
    report = d.check()
    stray, gone = d.live[0], d.live[-1]
    assert [(x.what, x.count, x.signal_ids) for x in report.change_log] == [
        ("signals of indexed media without a net 'add' in the change log", 1, (gone,)),
        ("net 'add's for signals of media not indexed (withdrawn, pending...) or absent",
         1, (stray,)),
    ]
    # The indexes follow the log, so they disagree with the store in the same places.
    assert differences(report, "pdq") == {
        "indexed in the store, not found in the index under their value": (1, (gone,)),
        "in the index, not indexed in the store": (1, (stray,)),
    }


def test_sqlite_damage_is_reported(sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    path = d.service.settings.data_dir / "hashdb.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA foreign_keys = OFF")
    db.execute("INSERT INTO signal (media_id, member_id, type, value) VALUES (999999, 1, 'md5', ?)",
               (b"\0" * 16,))
    db.commit()
    db.close()
    report = d.check()
    assert not report.ok
    assert any(p.startswith("foreign_key_check: signal") for p in report.integrity)


def test_a_check_beside_a_writer_reports_no_false_difference(
        sqlite_deployment: Deployment) -> None:
    d = sqlite_deployment
    stop = threading.Event()

    def write() -> None:
        seed = 100
        while not stop.is_set():
            seed += 1
            contribute(d.service, seed, n=5)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        reports = [d.check() for _ in range(5)]
    finally:
        stop.set()
        writer.join()
    for report in reports:
        assert not report.change_log and not any(t.differences for t in report.types)
        assert report.ok or report.unsettled
    # The writes did land during the comparisons (which looked again, or gave up).
    assert any(r.attempts > 1 or r.unsettled for r in reports)
    assert d.check().ok


def test_the_command_exits_non_zero_and_says_what_differs(tmp_path: Path) -> None:
    d = deploy(Settings(data_dir=tmp_path))
    d.sql("UPDATE media SET status = 'deleted' WHERE id = ?", d.live_media)
    d.service.close()

    def hashdb_check(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hashdb.cli", "check", *args],
                              capture_output=True, text=True, timeout=120)

    done = hashdb_check("--data-dir", str(tmp_path))
    assert done.returncode == 1
    assert f"in the index, not indexed in the store: 1 (signal ids {d.live[0]})" in done.stdout
    assert done.stdout.strip().endswith("FAILED")

    d.sql("UPDATE media SET status = 'active' WHERE id = ?", d.live_media)
    done = hashdb_check("--data-dir", str(tmp_path))
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout

    missing = hashdb_check("--data-dir", str(tmp_path / "nothing-here"))
    assert missing.returncode == 2 and "no data directory" in missing.stderr
    assert not (tmp_path / "nothing-here").exists()


def test_the_check_reads_postgresql_too(tmp_path: Path) -> None:
    with postgres_schema() as url:
        d = deploy(Settings(data_dir=tmp_path, database_url=url))
        try:
            assert d.check().ok
            d.sql("UPDATE media SET status = 'deleted' WHERE id = ?", d.live_media)
            report = d.check()
            assert [(x.count, x.signal_ids) for x in report.change_log] == [(1, (d.live[0],))]
            assert differences(report, "pdq") == {
                "in the index, not indexed in the store": (1, (d.live[0],))}
        finally:
            d.service.close()
