"""The processes a crash cycle starts, kills and inspects: `hashdb serve`, the
`hashdb` commands run beside it (keys, check), SQLite's own integrity check, and
the PostgreSQL server it may crash. Used by tests/crash_support.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

HASHDB = [sys.executable, "-m", "hashdb.cli"]
MEMBER = "crash-tester"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Deployment:
    """Where a server keeps its data: SQLite in `data_dir`, or PostgreSQL at
    `database_url` (the index snapshot stays in `data_dir` either way)."""

    data_dir: Path
    database_url: str | None = None
    # Small, so that snapshots are written all the time and a kill finds one fresh.
    snapshot_every: int = 200
    poll_seconds: float = 0.2

    def flags(self) -> list[str]:
        out = ["--data-dir", str(self.data_dir)]
        return out + (["--database-url", self.database_url] if self.database_url else [])

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HASHDB_")}
        env.update(HASHDB_SNAPSHOT_EVERY_CHANGES=str(self.snapshot_every),
                   HASHDB_INDEX_POLL_SECONDS=str(self.poll_seconds),
                   PYTHONUNBUFFERED="1")
        return env

    @property
    def sqlite_path(self) -> Path | None:
        return None if self.database_url else self.data_dir / "hashdb.sqlite3"

    @property
    def snapshot_meta(self) -> Path:
        return self.data_dir / "index-snapshot" / "meta.json"

    def hashdb(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*HASHDB, *args, *self.flags()], env=self.env(), cwd=self.data_dir,
                              capture_output=True, text=True, timeout=timeout)

    def create_key(self) -> str:
        """A trusted flagger's key, so that contributions are live at once."""
        done = self.hashdb("keys", "create", "--member", MEMBER,
                           "--roles", "contributor,matcher", "--trusted-flagger")
        if done.returncode:
            raise RuntimeError(f"hashdb keys create failed: {done.stderr[-2000:]}")
        return done.stdout.strip().splitlines()[-1]

    def check(self) -> CheckResult:
        done = self.hashdb("check", "--json")
        try:
            report = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            report = {}
        return CheckResult(done.returncode, report, done.stdout + done.stderr)

    def sqlite_integrity(self) -> str:
        """SQLite's own verdict, read beside whatever else has the file open."""
        if self.sqlite_path is None:
            return "n/a"
        db = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True)
        try:
            return "; ".join(str(r[0]) for r in db.execute("PRAGMA integrity_check"))
        finally:
            db.close()


@dataclass(frozen=True)
class CheckResult:
    returncode: int
    report: dict[str, Any]
    output: str

    @property
    def replayed(self) -> int | None:
        """Changes replayed after the snapshot (None: loaded by a rebuild)."""
        snap = self.report.get("snapshot_cursor")
        return None if snap is None else int(self.report["cursor"]) - int(snap)


class ServerProcess:
    """`hashdb serve` as a child process, on one port for its whole life."""

    def __init__(self, deployment: Deployment, log_path: Path) -> None:
        self.deployment = deployment
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 180) -> float:
        """Start and wait for /readyz; returns the seconds it took."""
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*HASHDB, "serve", *self.deployment.flags(), "--port", str(self.port),
                 "--log-level", "warning"],
                env=self.deployment.env(), cwd=self.deployment.data_dir, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        deadline = started + timeout
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"hashdb serve exited ({self.proc.returncode}):\n"
                                       + self.log_tail())
                try:
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        return time.monotonic() - started
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise RuntimeError(f"hashdb serve not ready after {timeout} s:\n" + self.log_tail())

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, no snapshot is saved."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self) -> None:
        """A clean shutdown (SIGTERM): the server saves its snapshot on the way out."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def loaded_from(self) -> str:
        """How the last start loaded its indexes, from its announcement."""
        found = "?"
        for line in self.log_path.read_text(errors="replace").splitlines():
            if "indexes from " in line:
                found = line.rsplit("indexes from ", 1)[1].rstrip(")")
        return found

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class DatabaseCrash(Protocol):
    """A PostgreSQL server this run may crash (tests/pg_private.py makes one)."""

    def kill(self) -> None:
        """SIGKILL the server and every backend."""
        ...

    def pid(self) -> int | None:
        """The postmaster's pid, while it runs."""
        ...

    def start(self) -> None: ...
