"""A PostgreSQL server of a test's own, which it may stop, start and kill.

The shared server on 127.0.0.1:5432 serves every other test module at once, so a
test that takes PostgreSQL away takes away one of its own: `initdb` into a
temporary directory, `pg_ctl` to run it on a free port (as the `postgres` user
when the tests run as root, since PostgreSQL refuses to run as root), removed
afterwards. Without PostgreSQL's server binaries, or if the server will not
start, the test skips and says why.

    with private_postgres() as pg:
        url = pg.url          # postgresql://postgres@127.0.0.1:<port>/postgres
        pg.stop()             # a clean shutdown: sessions are ended, new ones refused
        pg.start()
        pg.kill()             # SIGKILL to the server and its backends: a crash
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest


def _bindir() -> Path | None:
    """The newest installed server's binaries (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PrivatePostgres:
    root: Path  # the data directory is root/data; the socket and log live in root
    port: int
    bindir: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False)

    def start(self) -> None:
        if not self.processes():
            # Lock files left by a killed server. Its pid may live on as a zombie (when
            # nothing reaps orphans here), which PostgreSQL would take for a running
            # server; they are stale, since no process of this server is left.
            for stale in (self.data / "postmaster.pid",
                          self.root / f".s.PGSQL.{self.port}.lock"):
                stale.unlink(missing_ok=True)
        done = self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
            "-t", "60", "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1", "start")
        if done.returncode != 0:
            log = (self.root / "server.log")
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {done.stdout}{done.stderr}{tail}")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: sessions are ended and the server shuts down cleanly; `immediate`:
        it quits at once and recovers from its WAL at the next start."""
        done = self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        if done.returncode != 0 and self.running():
            raise RuntimeError(f"PostgreSQL did not stop: {done.stdout}{done.stderr}")

    def kill(self) -> None:
        """SIGKILL the server and every backend: what a crash or the OOM killer does.
        The next `start` recovers from the WAL."""
        deadline = time.monotonic() + 30
        killed: set[int] = set()
        while processes := self.processes():
            for pid in processes:
                _signal(pid, signal.SIGKILL)
            killed.update(processes)
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL survived SIGKILL: {processes}")
            time.sleep(0.05)
        # Dead, but maybe not yet reaped (init here reaps orphans every few seconds):
        # a new postmaster takes a zombie's pid in the lock file for a live server.
        reaped = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in killed) \
                and time.monotonic() < reaped:
            time.sleep(0.05)

    def processes(self) -> list[int]:
        """Every live process of this server: PostgreSQL's processes all work in their
        data directory, which is this server's alone."""
        data = self.data.resolve()
        out = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if Path(os.readlink(proc / "cwd")) == data and _alive(int(proc.name)):
                    out.append(int(proc.name))
            except OSError:
                continue
        return out

    def pid(self) -> int | None:
        """The postmaster's pid, if it runs."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead


def _signal(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A fresh server, started; stopped and removed on leaving. Skips the test when
    one cannot be made here."""
    bindir = _bindir()
    if bindir is None or not (bindir / "initdb").exists():
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as postgres")
    root = Path(tempfile.mkdtemp(prefix="hashdb-pg-"))
    try:
        if os.geteuid() == 0:
            try:
                shutil.chown(root, "postgres", "postgres")
            except (LookupError, OSError) as e:
                pytest.skip(f"cannot hand a directory to the postgres user: {e}")
        pg = PrivatePostgres(root, _free_port(), bindir)
        made = pg._run("initdb", "-D", str(pg.data), "--auth=trust", "-U", "postgres",
                       "-E", "UTF8", "--no-sync", timeout=120)
        if made.returncode != 0:
            pytest.skip(f"initdb failed: {made.stderr.strip()[-500:]}")
        try:
            pg.start()
        except RuntimeError as e:
            pytest.skip(str(e)[-1000:])
        try:
            yield pg
        finally:
            if pg.running():
                pg.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)
