"""Fixtures: the shared data folder, and a real hashdb server on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from api import create_app
from hashdb.index.base import Hits
from hashdb.service import Service
from hashdb.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "pdq-reference").is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


def as_sets(hits: Hits) -> list[set[tuple[int, int]]]:
    """Each query's hits as a set of (id, distance): order within a query is unspecified."""
    return [set(zip(*(a.tolist() for a in hits.of(i)), strict=True)) for i in range(len(hits))]


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    """The first truthy value of `condition()`, polled; fails after `timeout` (a
    bound for a loaded machine, never a speed asserted)."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    service: Service
    admin_key: str
    data_dir: Path
    _clients: dict[str | None, httpx.Client] = field(default_factory=dict)

    def client(self, key: str | None = None) -> httpx.Client:
        """An HTTP client sending this key (one per key, closed with the server)."""
        if key not in self._clients:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            self._clients[key] = httpx.Client(base_url=self.url, headers=headers, timeout=60)
        return self._clients[key]

    def close_clients(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    def new_key(self, member: str, roles: str) -> str:
        _, key = self.service.members.create_key(None, member, roles.split(","), create_member=True)
        return key


def start_server(
    settings: Settings, admin_key: str | None = None, production: bool = False
) -> Iterator[RunningServer]:
    """A real server on a loopback port. On a store that has keys already (a restart,
    keys made by the CLI), no admin key is made: `admin_key` is then the one to use.
    `production`: the uvicorn options `hashdb serve` uses (header deadlines)."""
    from api.abuse import server_options

    service = Service(settings)
    service.store.migrate()
    admin_key = service.members.ensure_admin_key() or admin_key or ""
    app = create_app(settings, service)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            **(server_options(settings) if production else {}))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and service.ready):
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    running = RunningServer(f"http://127.0.0.1:{port}", service, admin_key, settings.data_dir)
    try:
        yield running
    finally:
        running.close_clients()
        server.should_exit = True
        thread.join(timeout=10)
        service.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real server per test module, on its own SQLite file."""
    data_dir = tmp_path_factory.mktemp("hashdb-data")
    yield from start_server(Settings(data_dir=data_dir, index_poll_seconds=0.2,
                                     review_policy="live"))
