"""Bulk import through the service: idempotent across the chunks of one import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hashdb.importing import HashItem
from hashdb.models import Role
from hashdb.service import Service
from hashdb.settings import Settings


@pytest.fixture
def service(tmp_path: Path) -> Service:
    svc = Service(Settings(data_dir=tmp_path))
    svc.start(poll=False)
    svc.store.create_member("gifct", False)
    yield svc
    svc.close()


def items(values: list[str], **extra: object) -> list[HashItem]:
    return [HashItem("pdq", v, ["terrorism"], **extra) for v in values]  # type: ignore[arg-type]


def test_chunks_of_a_first_import_are_deduplicated_across_chunks(service: Service) -> None:
    rng = np.random.default_rng(11)
    values = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex() for _ in range(300)]
    caller = service.members.acting_as("gifct", [Role.CONTRIBUTOR])
    session = service.contributions.start_import(caller)
    assert session.member_was_empty
    assert service.contributions.import_hashes(caller, items(values[:200]), session) == (200, 0, 0)
    # The second chunk repeats 50 values of the first: they must not be stored twice.
    assert service.contributions.import_hashes(caller, items(values[150:]), session) == (100, 50, 0)
    assert service.follower.sizes()["pdq"] == 300
    # A later import of the same list creates nothing.
    again = service.contributions.start_import(caller)
    assert not again.member_was_empty
    assert service.contributions.import_hashes(caller, items(values), again) == (0, 300, 0)


def test_import_rejects_low_quality_and_bad_values(service: Service) -> None:
    caller = service.members.acting_as("gifct", [Role.CONTRIBUTOR])
    low = items(["ab" * 32], quality=10)
    assert service.contributions.import_hashes(caller, low) == (0, 0, 1)
    from hashdb.errors import InvalidSignal

    with pytest.raises(InvalidSignal):
        service.contributions.import_hashes(caller, items(["xyz"]))
