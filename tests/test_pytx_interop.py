"""python-threatexchange interop, both ways, with pytx's own code on its side.

- hashdb -> pytx: real PDQ hashes (Meta's reference images, hashed by pytx) and
  synthetic ones with near-duplicates planted at known distances are contributed over
  HTTP; `hashdb export --format csv` (the real CLI) writes them; pytx's signal types
  parse the file and its `PDQIndex` indexes it; every query finds the same stored
  hashes at the same distances in both.
- pytx -> hashdb: pytx's CLI fetches a signal list and writes it as CSV (`threatexchange
  dataset -P --csv`, its only CSV writer); `hashdb import --format csv` loads it into a
  running server, which then finds what pytx's index finds.

Thresholds at equal semantics: pytx's PDQIndex matches at distance <= 31
(`get_match_threshold()`, searched as FAISS's strict `< 31 + 1`), hashdb's pdq at
<= 31 (`default_max_distance`, inclusive). Planted hashes at 31 and 32 bits pin it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import RunningServer, start_server
from hashdb.settings import Settings
from hashdb.signals import signal_type

pytest.importorskip("threatexchange", reason="python-threatexchange is not installed "
                    "(pip install -e '.[test]')")

from threatexchange.cli.dataset_cmd import DatasetCommand  # noqa: E402
from threatexchange.content_type.photo import PhotoContent  # noqa: E402
from threatexchange.content_type.video import VideoContent  # noqa: E402
from threatexchange.exchanges.fetch_state import (  # noqa: E402
    FetchedSignalMetadata,
    SignalOpinion,
    SignalOpinionCategory,
)
from threatexchange.interface_validation import SignalTypeMapping  # noqa: E402
from threatexchange.signal_type.md5 import VideoMD5Signal  # noqa: E402
from threatexchange.signal_type.pdq.pdq_hasher import pdq_from_bytes  # noqa: E402
from threatexchange.signal_type.pdq.signal import PdqSignal  # noqa: E402

from ingest.formats import read_items  # noqa: E402

# Distances of the near-duplicates planted around each synthetic base: both sides of
# the threshold (31), and the 16-bit boundaries of a multi-index over 16 chunks.
PLANTED = (0, 1, 7, 15, 16, 17, 30, 31, 32, 33, 45)
THRESHOLD = 31
HASHDB = [sys.executable, "-m", "hashdb.cli"]
PYTX = [sys.executable, "-m", "threatexchange"]

# Matches as both sides give them: (query id, stored hash, distance).
Matches = set[tuple[str, str, int]]


@dataclass(frozen=True)
class Hashes:
    stored: list[str]
    queries: dict[str, str]
    expected_planted: Matches  # what the planted hashes alone must give


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A server of its own: each direction compares against exactly its own hashes."""
    yield from start_server(Settings(data_dir=tmp_path / "hashdb", index_poll_seconds=0.1,
                                     review_policy="live"))


def test_thresholds_have_the_same_meaning_on_both_sides() -> None:
    index_cls = PdqSignal.get_index_cls()
    assert index_cls.get_match_threshold() == THRESHOLD
    assert signal_type("pdq").default_max_distance == THRESHOLD


def test_a_hashdb_export_loads_into_pytx_and_matches_the_same(
    server: RunningServer, shared_data: Path, tmp_path: Path
) -> None:
    hashes = _hashes(np.random.default_rng(2026), shared_data, bases=40, fillers=1500)
    contributor = server.client(server.new_key("hotline", "contributor"))
    for lo in range(0, len(hashes.stored), 1000):
        items = [{"type": "pdq", "value": v, "labels": ["terrorism"], "quality": 100}
                 for v in hashes.stored[lo : lo + 1000]]
        response = contributor.post("/v1/hashes", json={"items": items})
        assert response.status_code == 200, response.text
        assert all(i["created"] for i in response.json()["items"])

    exported = tmp_path / "export.csv"
    done = subprocess.run([*HASHDB, "export", "--format", "csv", "--data-dir",
                           str(server.data_dir), "-o", str(exported)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    # pytx's side: its signal types parse the rows, its PDQIndex indexes them.
    signals = _pytx_signals(exported.read_text(encoding="utf-8"))
    assert sorted(v for t, v in signals if t is PdqSignal) == sorted(hashes.stored)
    index = PdqSignal.get_index_cls().build((v, v) for t, v in signals if t is PdqSignal)
    theirs = _pytx_matches(index, hashes.queries)
    ours = _hashdb_matches(server, hashes.queries)

    assert ours == theirs, _difference(ours, theirs)
    assert hashes.expected_planted <= ours
    assert not {m for m in ours if m[2] > THRESHOLD}
    # The real images matched each other too, not only themselves.
    assert any(q.startswith("image:") and d > 0 for q, _, d in ours)


def test_a_csv_written_by_pytx_imports_into_hashdb_and_matches_the_same(
    server: RunningServer, tmp_path: Path
) -> None:
    rng = np.random.default_rng(7)
    hashes = _hashes(rng, None, bases=30, fillers=800)
    md5s = [rng.integers(0, 256, 16, dtype=np.uint8).tobytes().hex() for _ in range(5)]
    listed = tmp_path / "signals.txt"  # what pytx's local-file exchange reads
    listed.write_text("".join(f"pdq {v}\n" for v in hashes.stored)
                      + "".join(f"video_md5 {v}\n" for v in md5s))

    # pytx's CLI, in a home of its own: a collaboration on that file, fetched, written
    # out as CSV by pytx itself.
    env = {**os.environ, "HOME": str(tmp_path / "pytx-home")}
    for args in (["config", "collab", "edit", "local_file", "--create", "--filename",
                  str(listed), "hotline-list"], ["fetch"]):
        done = subprocess.run([*PYTX, *args], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
    done = subprocess.run([*PYTX, "dataset", "-P", "--csv"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    written = tmp_path / "pytx.csv"
    written.write_text(done.stdout, encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == len(hashes.stored) + len(md5s)
    # pytx writes its opinion of a signal where hashdb's own export writes a label.
    assert {r["category"] for r in rows} == {"INVESTIGATION_SEED"}

    before = server.service.follower.sizes().get("pdq", 0)
    done = subprocess.run(
        [*HASHDB, "import", str(written), "--format", "csv", "--member", "pytx-collab",
         "--labels", "terrorism", "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "HASHDB_REVIEW_POLICY": "live"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "created": len(rows), "existing": 0, "rejected": 0}
    _wait_for(lambda: server.service.follower.sizes().get("pdq", 0)
              >= before + len(hashes.stored))

    signals = _pytx_signals(written.read_text(encoding="utf-8"))
    assert len(signals) == len(rows)
    index = PdqSignal.get_index_cls().build((v, v) for t, v in signals if t is PdqSignal)
    theirs = _pytx_matches(index, hashes.queries)
    ours = _hashdb_matches(server, hashes.queries)
    assert ours == theirs, _difference(ours, theirs)
    assert hashes.expected_planted <= ours
    # The file's video MD5s are hashdb md5s, found exactly.
    found = _hashdb_matches(server, {f"md5:{i}": v for i, v in enumerate(md5s)}, "md5")
    assert found == {(f"md5:{i}", v, 0) for i, v in enumerate(md5s)}


def test_pytx_opinions_are_not_labels_and_its_negatives_are_not_imported() -> None:
    """Rows as pytx's own CSV writer writes them (`DatasetCommand._print_csv`), with
    the opinions an exchange can hold, read by hashdb's importer."""

    @dataclass
    class Opinion(FetchedSignalMetadata):
        category: SignalOpinionCategory
        tags: frozenset[str]

        def get_as_opinions(self) -> list[SignalOpinion]:
            return [SignalOpinion(False, self.category, set(self.tags))]

    out = io.StringIO()
    writer = csv.DictWriter(out, ["signal_type", "signal_str", "collab", "category", "tags"])
    writer.writeheader()
    command = DatasetCommand(print_signals=True, csv=True)
    values = [f"{i:064x}" for i in range(1, 5)]
    opinions = [(SignalOpinionCategory.POSITIVE_CLASS, {"csam"}),
                (SignalOpinionCategory.INVESTIGATION_SEED, set()),
                (SignalOpinionCategory.NEGATIVE_CLASS, {"terrorism"}),
                (SignalOpinionCategory.POSITIVE_CLASS, {"terrorism", "other-illegal"})]
    for value, (category, tags) in zip(values, opinions, strict=True):
        command._print_csv(writer, "a-collab", PdqSignal, value,
                           Opinion(category, frozenset(tags)))

    items = list(read_items(io.StringIO(out.getvalue()), "csv", ["other-illegal"]))
    assert [i.value for i in items] == [values[0], values[1], values[3]]
    assert [sorted(i.labels) for i in items] == [
        ["csam", "other-illegal"], ["other-illegal"],
        ["other-illegal", "other-illegal", "terrorism"]]
    assert {i.source for i in items} == {"a-collab"}


def _hashes(rng: np.random.Generator, shared_data: Path | None, bases: int,
            fillers: int) -> Hashes:
    """Stored hashes and queries: planted near-duplicates of synthetic bases (the bases
    are the queries, not stored), random fillers, random misses, and with shared data
    the PDQ reference images as pytx hashes them (stored and queried)."""
    stored: list[str] = []
    queries: dict[str, str] = {}
    expected: Matches = set()
    for b in range(bases):
        base = rng.integers(0, 2, 256, dtype=np.uint8)
        queries[f"base:{b}"] = _hex(base)
        for d in PLANTED:
            near = base.copy()
            near[rng.choice(256, d, replace=False)] ^= 1
            stored.append(_hex(near))
            if d <= THRESHOLD:
                expected.add((f"base:{b}", _hex(near), d))
    stored += [_hex(rng.integers(0, 2, 256, dtype=np.uint8)) for _ in range(fillers)]
    for m in range(20):
        queries[f"miss:{m}"] = _hex(rng.integers(0, 2, 256, dtype=np.uint8))
    if shared_data is not None:
        for path in sorted((shared_data / "pdq-reference").rglob("*")):
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            value, quality = pdq_from_bytes(path.read_bytes())
            if quality >= PdqSignal.QUALITY_THRESHOLD and value not in stored:
                stored.append(value)
                queries[f"image:{path.relative_to(shared_data)}"] = value
    assert len(set(stored)) == len(stored)
    return Hashes(stored, queries, expected)


def _hex(bits: np.ndarray) -> str:
    return np.packbits(bits).tobytes().hex()


def _pytx_signals(text: str) -> list[tuple[type[Any], str]]:
    """The rows pytx can read, as (its signal type, validated signal): the CSV's
    `signal_type` names looked up in pytx's own mapping of types."""
    mapping = SignalTypeMapping([PhotoContent, VideoContent], [PdqSignal, VideoMD5Signal])
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        kind = mapping.signal_type_by_name.get(row["signal_type"])
        if kind is not None:
            out.append((kind, kind.validate_signal_str(row["signal_str"])))
    return out


def _pytx_matches(index: Any, queries: dict[str, str]) -> Matches:
    return {(qid, match.metadata, int(match.similarity_info.distance))
            for qid, value in queries.items() for match in index.query(value)}


def _hashdb_matches(server: RunningServer, queries: dict[str, str], kind: str = "pdq") -> Matches:
    matcher = server.client(server.new_key("platform", "matcher"))
    response = matcher.post("/v1/match/batch", json={"queries": [
        {"id": qid, "type": kind, "value": value} for qid, value in queries.items()]})
    assert response.status_code == 200, response.text
    return {(result["id"], m["value"], m["distance"])
            for result in response.json()["results"] for m in result["matches"]}


def _difference(ours: Matches, theirs: Matches) -> str:
    return (f"only hashdb: {sorted(ours - theirs)[:10]}\n"
            f"only pytx: {sorted(theirs - ours)[:10]}")


def _wait_for(condition: Any, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the server did not pick up the import"
        time.sleep(0.05)
