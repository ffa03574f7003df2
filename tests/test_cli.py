"""The `hashdb` console script, run as a user would run it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conftest import free_port

HASHDB = [sys.executable, "-m", "hashdb.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HASHDB, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_hash_prints_json_lines(shared_data: Path) -> None:
    images = [shared_data / "pdq-reference" / "bridge-mods" / "aaa-orig.jpg",
              shared_data / "pdq-reference" / "misc-images" / "c.png"]
    done = run("hash", *map(str, images), "--types", "pdq,sha256")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in images]
    for line in lines:
        assert line["media_type"] == "image"
        # c.png has a thin dark frame: its trimmed PDQ comes after the plain one.
        types = [(s["type"], s.get("variant")) for s in line["signals"]]
        assert types in ([("pdq", None), ("sha256", None)],
                         [("pdq", None), ("pdq", "trimmed"), ("sha256", None)])
        assert re.fullmatch(r"[0-9a-f]{64}", line["signals"][0]["value"])
        assert 0 <= line["signals"][0]["quality"] <= 100


def test_hash_reports_a_bad_file_and_carries_on(tmp_path: Path, shared_data: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    good = shared_data / "pdq-reference" / "bridge-mods" / "square-128x128.jpg"
    done = run("hash", str(bad), str(good))
    assert done.returncode == 1
    first, second = (json.loads(line) for line in done.stdout.splitlines())
    assert first["error"]["code"] == "invalid_media"
    assert second["media_type"] == "image"


def test_keys_create_prints_the_key_last(tmp_path: Path) -> None:
    done = run("keys", "create", "--member", "platform-a", "--roles", "contributor,matcher",
               "--data-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"hdb_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
    bad = run("keys", "create", "--member", "x", "--roles", "superuser",
              "--data-dir", str(tmp_path))
    assert bad.returncode == 2 and "unknown role" in bad.stderr


def test_import_then_export_round_trips(tmp_path: Path) -> None:
    source = tmp_path / "list.txt"
    values = [f"{i:064x}" for i in range(1, 1001)]
    source.write_text("".join(f"pdq {v}\n" for v in values) + f"pdq {values[0]}\n")
    data = ["--data-dir", str(tmp_path / "data")]
    done = run("import", str(source), "--format", "local", "--member", "gifct",
               "--labels", "terrorism", *data)
    assert done.returncode == 0, done.stderr
    # the repeated last line is counted as already present
    assert json.loads(done.stdout) == {"created": 1000, "existing": 1, "rejected": 0}
    again = run("import", str(source), "--format", "local", "--member", "gifct",
                "--labels", "terrorism", *data)
    assert json.loads(again.stdout) == {"created": 0, "existing": 1001, "rejected": 0}
    out = run("export", "--format", "local", *data)
    assert out.returncode == 0
    exported = [line.split() for line in out.stdout.splitlines()]
    assert sorted(v for _, v in exported) == values and {t for t, _ in exported} == {"pdq"}


def test_serve_prints_a_working_key_and_example(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*HASHDB, "serve", "--data-dir", str(tmp_path), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "API docs" in line:
                break
        text = "".join(lines)
        key = re.search(r"HASHDB_KEY=(hdb_\S+)", text)
        assert key, text
        assert f"http://127.0.0.1:{port}/v1/hash" in text
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            # The example is shown only once it works: the indexes are loaded.
            assert client.get("/readyz").status_code == 200
            response = client.post(
                "/v1/match", json={"signals": [{"type": "pdq", "value": "0" * 64}]},
                headers={"Authorization": f"Bearer {key.group(1)}"},
            )
            assert response.status_code == 200 and response.json()["matches"] == []
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        if proc.stdout:
            proc.stdout.close()
    assert (tmp_path / "hashdb.sqlite3").is_file()
