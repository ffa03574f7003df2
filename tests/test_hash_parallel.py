"""`hashdb hash` on folders, on every core: the lines one process would write, in
the order of the walk; and a folder of any size streams through a bounded window."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import ROOT

HASHDB = [sys.executable, "-m", "hashdb.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HASHDB, *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def make_tree(root: Path, shared_data: Path) -> list[str]:
    """A tree of photos (and two files that are not media), and the order a walk
    gives: entries sorted by name in each folder, folders entered where they sort."""
    photos = sorted((shared_data / "pdq-reference" / "bridge-mods").glob("*.jpg"))
    layout = ["b/9.jpg", "b/10.jpg", "a/deep/x.jpg", "a/notes.txt", "a/empty.jpg", "a.jpg",
              *(f"many/{i:03d}.jpg" for i in range(40))]
    for i, name in enumerate(layout):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("notes.txt"):
            path.write_text("not a picture\n")
        elif not name.endswith("empty.jpg"):
            path.write_bytes(photos[i % len(photos)].read_bytes())
        else:
            path.write_bytes(b"")
    order = ["a/deep/x.jpg", "a/empty.jpg", "a/notes.txt", "a.jpg", "b/10.jpg", "b/9.jpg",
             *(f"many/{i:03d}.jpg" for i in range(40))]
    return [str(root / name) for name in order]


def test_folders_are_walked_in_order_and_hashed_on_every_core(
    tmp_path: Path, shared_data: Path
) -> None:
    expected = make_tree(tmp_path / "tree", shared_data)
    single = str(shared_data / "pdq-reference" / "bridge-mods" / "aaa-orig.jpg")
    missing = str(tmp_path / "missing.jpg")
    args = ["hash", "--types", "pdq,md5", str(tmp_path / "tree"), single, missing]
    parallel = run(*args, "-j", "2")
    assert parallel.returncode == 1, parallel.stderr  # three files are not media
    lines = [json.loads(line) for line in parallel.stdout.splitlines()]
    assert [line["path"] for line in lines] == [*expected, single, missing]
    for line in lines:
        name = Path(line["path"]).name
        if name in ("empty.jpg", "notes.txt"):
            assert line["error"]["code"] == "invalid_media", line
        elif name == "missing.jpg":
            assert line["error"]["code"] == "unreadable", line
        else:
            # Each line is its own file's: the order held through the pool.
            md5 = [s["value"] for s in line["signals"] if s["type"] == "md5"]
            assert md5 == [hashlib.md5(Path(line["path"]).read_bytes()).hexdigest()]
            assert [s["type"] for s in line["signals"]][0] == "pdq"
    # One process writes the very same lines.
    assert run(*args, "-j", "1").stdout == parallel.stdout


def test_a_folder_streams_through_a_bounded_window() -> None:
    """Paths are taken from the walk only as the pool needs them: however many
    files, a few chunks at a time are in flight, and the answers keep their order."""
    script = textwrap.dedent(
        """
        import json
        from functools import partial
        from hashdb.client.files import CHUNK, TASKS_PER_WORKER, map_files, signals_line

        taken = 0
        def paths():
            global taken
            for i in range(5000):
                taken += 1
                yield f"/nonexistent/{i:05d}.jpg"

        work = partial(signals_line, types=["md5"], limits=None)
        lines = map_files(work, paths(), jobs=2)
        first = next(lines)
        in_flight = taken
        rest = list(lines)
        order = [json.loads(line)["path"] for _, line in [first, *rest]]
        print(json.dumps({"in_flight": in_flight, "window": 2 * TASKS_PER_WORKER * CHUNK,
                          "chunk": CHUNK, "count": len(order),
                          "ordered": order == sorted(order)}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["count"] == 5000 and report["ordered"]
    assert report["in_flight"] <= report["window"] + report["chunk"]


def test_jobs_must_be_positive() -> None:
    done = run("hash", "-j", "0", ".")
    assert done.returncode == 2 and "must be 1 or more" in done.stderr
