"""The `hashdb` console script, run as a user would run it."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import httpx
import pytest

from conftest import RunningServer, free_port

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


# hashdb match: hashed here, matched on a server --------------------------------------
@pytest.fixture(scope="module")
def stored(server: RunningServer, shared_data: Path) -> dict[str, int]:
    """A photo and a video, uploaded the ordinary way."""
    key = server.new_key("cli-hotline", "contributor")
    ids = {}
    for path in (shared_data / "pdq-reference" / "reg-test-input" / "dih" / "bridge-1-original.jpg",
                 shared_data / "video-samples" / "pattern-hd-no-bar.mp4"):
        response = server.client(key).post("/v1/media", files={"file": (path.name,
                                                                       path.read_bytes())},
                                           data={"labels": "terrorism"})
        assert response.status_code == 201, response.text
        ids[path.suffix] = response.json()["media_id"]
    return ids


def uploaded_matches(server: RunningServer, key: str, path: Path) -> dict:
    response = server.client(key).post("/v1/match", files={"file": (path.name,
                                                                   path.read_bytes())})
    assert response.status_code == 200, response.text
    body: dict = response.json()
    return body


def test_match_prints_a_line_per_file_as_an_upload_answers(
    server: RunningServer, stored: dict[str, int], shared_data: Path, tmp_path: Path
) -> None:
    ref = shared_data / "pdq-reference"
    folder = tmp_path / "uploads"
    (folder / "sub").mkdir(parents=True)
    files = {
        "b-rotated.jpg": ref / "reg-test-input" / "dih" / "bridge-2-rotate-90.jpg",
        "c-flipped.jpg": ref / "reg-test-input" / "dih" / "bridge-6-flipy.jpg",
        "sub/unrelated.jpg": ref / "reg-test-input" / "labelme-subset" / "q1050.jpg",
        "sub/z-other.jpg": ref / "bridge-mods" / "aaa-orig.jpg",
    }
    for name, source in files.items():
        (folder / name).write_bytes(source.read_bytes())
    (folder / "notes.txt").write_text("not media\n")
    key = server.new_key("cli-platform", "matcher")
    # PDQ only, to be quick (tests/test_client.py compares every type): the upload's
    # PDQ matches are the answer, as PDQ comes first among its signals.
    done = run("match", str(folder), "--url", server.url, "--batch", "2", "-j", "2",
               "--types", "pdq", env={"HASHDB_KEY": key})
    assert done.returncode == 1, done.stderr  # notes.txt is not media
    assert done.stderr == ""  # no progress bar: stderr is not a terminal
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    order = ["b-rotated.jpg", "c-flipped.jpg", "notes.txt", "sub/unrelated.jpg",
             "sub/z-other.jpg"]
    assert [line["path"] for line in lines] == [str(folder / n) for n in order]
    by_name = dict(zip(order, lines, strict=True))
    assert by_name["notes.txt"]["error"]["code"] == "invalid_media"
    for name, source in files.items():
        line = by_name[name]
        assert line["media_type"] == "image" and "media_matches" not in line
        expected = uploaded_matches(server, key, source)["matches"]
        assert line["matches"] == [m for m in expected if m["signal_type"] == "pdq"], name
    assert {m["media_id"] for m in by_name["b-rotated.jpg"]["matches"]} == {stored[".jpg"]}
    assert by_name["b-rotated.jpg"]["matches"][0]["variant"] == "pdq/rotate90"
    assert by_name["sub/unrelated.jpg"]["matches"] == []


def test_match_a_video_gives_its_media_matches(
    server: RunningServer, stored: dict[str, int], shared_data: Path
) -> None:
    video = shared_data / "video-samples" / "pattern-sd-with-small-logo-bar.mp4"
    key = server.new_key("cli-video-platform", "matcher")
    # stderr on a terminal: the progress bar shows there, and only there.
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        done = subprocess.run([*HASHDB, "match", str(video), "--url", server.url, "--key", key],
                              stdout=subprocess.PIPE, stderr=follower, text=True, timeout=120)
        os.close(follower)
        bar = b""
        while chunk := _read_pty(leader):
            bar += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0
    assert b"1/1" in bar and b"file" in bar
    [line] = [json.loads(x) for x in done.stdout.splitlines()]
    expected = uploaded_matches(server, key, video)
    assert line["media_type"] == "video"
    assert line["media_matches"] == expected["media_matches"]
    assert line["matches"] == expected["matches"]
    assert [m["media_id"] for m in line["media_matches"]] == [stored[".mp4"]]


def _read_pty(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the writer has closed it
        return b""


def test_match_stops_on_a_refused_key_and_documents_its_exit_status(
    server: RunningServer, shared_data: Path
) -> None:
    image = shared_data / "pdq-reference" / "bridge-mods" / "aaa-orig.jpg"
    done = run("match", str(image), "--url", server.url, "--key", "hdb_not_a_key",
               "--types", "pdq")
    assert done.returncode == 2 and "unauthorized" in done.stderr
    assert done.stdout == ""
    # A request the server refuses fails its files, each with the server's code; the
    # run goes on.
    key = server.new_key("cli-strict-platform", "matcher")
    refused = run("match", str(image), str(image), "--url", server.url, "--key", key,
                  "--types", "pdq", "--max-distance", "65")
    assert refused.returncode == 1, refused.stderr
    lines = [json.loads(x) for x in refused.stdout.splitlines()]
    assert [x["path"] for x in lines] == [str(image)] * 2
    assert {x["error"]["code"] for x in lines} == {"invalid_request"}, lines
    missing = run("match", str(image), env={"HASHDB_URL": "", "HASHDB_KEY": ""})
    assert missing.returncode == 2 and "--url" in missing.stderr
    usage = run("match", "--help")
    text = " ".join(usage.stdout.split())
    assert "exit status: 0" in text and "1 if any file failed" in text
