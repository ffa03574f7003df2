"""Restarts: index snapshot plus change log, and the fallbacks to a rebuild."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from hashdb.importing import HashItem
from hashdb.models import Role
from hashdb.service import Service
from hashdb.settings import Settings
from hashdb.signals import HashValue, Signal


def start(data_dir: Path) -> Service:
    service = Service(Settings(data_dir=data_dir))
    service.start(poll=False)
    return service


def contribute(service: Service, values: list[str]) -> None:
    if service.store.get_member("m") is None:
        service.store.create_member("m", False)
    caller = service.members.acting_as("m", [Role.CONTRIBUTOR])
    items = [HashItem("pdq", v, ["terrorism"]) for v in values]
    service.contributions.contribute_hashes(caller, items)


def matched(service: Service, value: str) -> bool:
    caller = service.members.acting_as("m", [Role.MATCHER])
    signal = Signal(HashValue.from_hex("pdq", value))
    return bool(service.matcher.match(caller, [signal]).matches)


def values(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex() for _ in range(n)]


def test_restart_loads_the_snapshot_and_replays_later_changes(tmp_path: Path) -> None:
    first, later = values(50, 1), values(5, 2)
    service = start(tmp_path)
    assert service.loaded_from == "rebuild"
    contribute(service, first)
    service.close()  # saves a snapshot
    assert (tmp_path / "index-snapshot" / "meta.json").is_file()

    service = start(tmp_path)
    assert service.loaded_from == "snapshot"
    assert service.follower.sizes()["pdq"] == 50
    contribute(service, later)
    # A crash: no snapshot at exit. The next start replays the change log after it.
    service._stop.set()
    service.store.close()

    service = start(tmp_path)
    try:
        assert service.loaded_from == "snapshot"
        assert service.follower.sizes()["pdq"] == 55
        assert all(matched(service, v) for v in first[:3] + later)
    finally:
        service.close()


def test_snapshot_of_another_database_is_not_used(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    service = start(a)
    contribute(service, values(10, 3))
    service.close()
    other = start(b)
    other.close()
    shutil.rmtree(b / "index-snapshot", ignore_errors=True)
    shutil.copytree(a / "index-snapshot", b / "index-snapshot")
    service = start(b)
    try:
        assert service.loaded_from == "rebuild"
        assert service.follower.sizes()["pdq"] == 0
    finally:
        service.close()


def test_corrupt_or_future_snapshot_falls_back_to_a_rebuild(tmp_path: Path) -> None:
    stored = values(20, 4)
    service = start(tmp_path)
    contribute(service, stored)
    service.close()
    (tmp_path / "index-snapshot" / "pdq.index").write_bytes(b"not an index")
    service = start(tmp_path)
    assert service.loaded_from == "rebuild"
    assert service.follower.sizes()["pdq"] == 20 and matched(service, stored[0])
    service.close()

    meta = tmp_path / "index-snapshot" / "meta.json"
    meta.write_text(meta.read_text().replace('"cursor": ', '"cursor": 1000'))
    service = start(tmp_path)
    try:
        assert service.loaded_from == "rebuild"
        assert service.follower.sizes()["pdq"] == 20
    finally:
        service.close()
