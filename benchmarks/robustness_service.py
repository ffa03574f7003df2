"""The service side of the robustness benchmark: a real `hashdb serve` over a
temporary data dir, a small HTTP client, and the collection of its answers
(contributions, signals, /v1/match answers) into caches keyed by the service's code.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustness_corpus import Corpus, decode_rgb, local_hashes, progress, query_bytes
from robustness_stats import Query

ROOT = Path(__file__).resolve().parents[1]
HASHDB = str(Path(sys.executable).with_name("hashdb"))


class Service:
    """A real `hashdb serve` in a subprocess, on a free port, over a temporary data dir;
    and a small HTTP client (one keep-alive connection per thread)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.key = self._create_key()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log_path = data_dir / "serve.log"
        self._log = self.log_path.open("wb")
        # The packaged SSCD background, whatever this shell says: the analysis
        # recomputes the offsets with it (and checks the service's scores agree).
        env = {k: v for k, v in os.environ.items() if k != "HASHDB_SSCD_BACKGROUND"}
        self.proc = subprocess.Popen(
            [HASHDB, "serve", "--data-dir", str(data_dir), "--port", str(self.port),
             "--log-level", "warning"], stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._local = threading.local()
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _create_key(self) -> str:
        out = subprocess.run(
            [HASHDB, "keys", "create", "--data-dir", str(self.data_dir), "--member",
             "benchmark", "--roles", "contributor,matcher", "--trusted-flagger"],
            check=True, capture_output=True, text=True)
        return out.stdout.strip().splitlines()[-1].strip()

    def _wait_ready(self, timeout: float = 900.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hashdb serve exited:\n{self.log_tail()}")
            try:
                status, _ = self.request("GET", "/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"hashdb serve not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.key}"}
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in range(2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=300)
            try:
                conn.request(method, path, body, headers)
                resp = conn.getresponse()
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def upload(self, path: str, data: bytes, fields: dict[str, str] | None = None,
               ) -> tuple[int, Any]:
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                 .encode() for k, v in (fields or {}).items()]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                     f'filename="upload.jpg"\r\nContent-Type: application/octet-stream\r\n\r\n'
                     .encode() + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        return self.request("POST", path, b"".join(parts),
                            f"multipart/form-data; boundary={boundary}")


def service_fingerprint() -> str:
    """Changes whenever the service's code does (cached responses are then stale)."""
    h = hashlib.sha256()
    for folder in ("hashdb", "ingest", "api"):
        for p in sorted((ROOT / folder).rglob("*")):
            if p.suffix in (".py", ".sql") and p.is_file():
                h.update(str(p.relative_to(ROOT)).encode())
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


def compact_response(resp: dict[str, Any], names: dict[int, str]) -> dict[str, Any]:
    """What the analysis needs of a /v1/match answer, media ids as corpus names: per
    match [media, type, variant, distance, score, cosine] (sscd: `score` is the
    background-corrected one the tiers apply to). Tolerates answers without
    `variant`, `score`, `cosine` or `candidates`; video answers' `media_matches` are
    not read (this benchmark matches images)."""

    def item(m: dict[str, Any]) -> list[Any]:
        media = names.get(int(m["media_id"]), f"?{m['media_id']}")
        return [media, m.get("signal_type"), m.get("variant") or m.get("signal_type"),
                m.get("distance"), m.get("score"), m.get("cosine")]

    return {"signals": [compact_signal(s) for s in resp.get("signals", [])],
            "matches": [item(m) for m in resp.get("matches", [])],
            "candidates": [item(m) for m in resp.get("candidates", [])],
            "skipped": [s.get("type") for s in resp.get("skipped", [])]}


def compact_signal(s: dict[str, Any]) -> list[Any]:
    return [s["type"], s["value"], s.get("quality"), s.get("variant")]


class JsonLines:
    """An append-only cache of records by id: what a killed run had done is kept."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        self.records: dict[str, Any] = {}
        if path.exists() and not fresh:
            for line in path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self.records[rec["id"]] = rec["value"]
        elif path.exists():
            path.unlink()
        self._lock = threading.Lock()
        self._file = path.open("a")

    def add(self, rid: str, value: Any) -> None:
        with self._lock:
            self.records[rid] = value
            self._file.write(json.dumps({"id": rid, "value": value}) + "\n")

    def close(self) -> None:
        self._file.close()


@dataclass
class Collected:
    """Everything measured of one run, from the caches or from the service."""

    stored: dict[str, list[list[Any]]]  # original -> its signals as stored (compact)
    responses: dict[str, dict[str, Any]]  # query id -> compact /v1/match answer
    local: dict[str, dict[str, Any]]  # query id -> plain PDQ, quality and pHash (here)
    store: dict[str, Any]  # what a stored item costs in the service's SQLite


def collect(corpus: Corpus, queries: list[Query], members: list[str], run_dir: Path,
            fresh: bool, clients: int, seed: int, reuse_service: bool = False) -> Collected:
    svc_dir = run_dir / f"service-{service_fingerprint()}"
    if reuse_service and not (svc_dir / "stored.json").exists():
        previous = sorted((d for d in run_dir.glob("service-*") if (d / "stored.json").exists()),
                          key=lambda d: (d / "stored.json").stat().st_mtime)
        if not previous:
            raise SystemExit("--reuse-service: no earlier service answers for this run")
        svc_dir = previous[-1]
        print(f"  --reuse-service: answers of an earlier service version ({svc_dir.name}); "
              "the service's code has changed since")
    svc_dir.mkdir(parents=True, exist_ok=True)
    local = JsonLines(run_dir / "local.jsonl", fresh)
    responses = JsonLines(svc_dir / "responses.jsonl", fresh)
    stored_path, store_path = svc_dir / "stored.json", svc_dir / "store.json"
    keys = [o.key for o in corpus.originals]
    todo = [q for q in queries if q.id not in local.records or q.id not in responses.records]
    have_stored = stored_path.exists() and store_path.exists() and not fresh
    print(f"\n## Service answers: {len(queries) - len(todo):,} of {len(queries):,} cached "
          f"in {svc_dir.relative_to(ROOT)}")
    if reuse_service and (todo or not have_stored):
        raise SystemExit(f"--reuse-service: {len(todo):,} queries have no cached answer")
    if todo or not have_stored:
        with tempfile.TemporaryDirectory(prefix="hashdb-robustness-") as tmp, \
                Service(Path(tmp)) as svc:
            print(f"  hashdb serve on port {svc.port}, data dir {tmp}")
            names, stored = contribute(svc, corpus, members, clients)
            store = store_cost(Path(tmp), stored, members)
            if not have_stored:
                hashed = hash_originals(svc, corpus, [k for k in keys if k not in stored], clients)
                stored.update(hashed)
                stored_path.write_text(json.dumps(stored))
                store_path.write_text(json.dumps(store))
            run_queries(svc, corpus, todo, names, local, responses, clients, seed)
    local.close()
    responses.close()
    return Collected(json.loads(stored_path.read_text()), responses.records, local.records,
                     json.loads(store_path.read_text()))


def contribute(svc: Service, corpus: Corpus, members: list[str], clients: int,
               ) -> tuple[dict[int, str], dict[str, list[list[Any]]]]:
    def one(key: str) -> tuple[str, Any]:
        status, body = svc.upload("/v1/media", corpus.data(key), {"labels": "other-illegal"})
        if status != 201:
            raise RuntimeError(f"contributing {key}: HTTP {status} {body}")
        return key, body

    names: dict[int, str] = {}
    stored: dict[str, list[list[Any]]] = {}
    with ThreadPoolExecutor(clients) as pool:
        for key, body in progress(pool.map(one, members), len(members), "contributing"):
            if int(body["media_id"]) in names:
                raise RuntimeError(f"{key} was stored as {names[int(body['media_id'])]}")
            names[int(body["media_id"])] = key
            stored[key] = [compact_signal(s) for s in body["signals"]]
    return names, stored


def hash_originals(svc: Service, corpus: Corpus, keys: list[str], clients: int,
                   ) -> dict[str, list[list[Any]]]:
    """The signals the service would store for each original never contributed."""
    def one(key: str) -> tuple[str, list[list[Any]]]:
        status, body = svc.upload("/v1/hash", corpus.data(key))
        if status != 200:
            raise RuntimeError(f"hashing {key}: HTTP {status} {body}")
        return key, [compact_signal(s) for s in body["signals"]]

    with ThreadPoolExecutor(clients) as pool:
        return dict(progress(pool.map(one, keys), len(keys), "hashing the other originals"))


def store_cost(data_dir: Path, stored: dict[str, list[list[Any]]], members: list[str],
               ) -> dict[str, Any]:
    # the database and its write-ahead log (index snapshots are a cache, not counted)
    files = [p for p in data_dir.glob("hashdb.sqlite3*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    per_type: dict[str, list[int]] = {}
    for key in members:
        for sig_type, value, *_ in stored[key]:
            per_type.setdefault(sig_type, []).append(len(value) // 2)
    return {"sqlite_bytes": size, "sqlite_files": sorted(p.name for p in files),
            "items": len(members), "sqlite_bytes_per_item": size / max(1, len(members)),
            "raw_bytes_per_item": {t: sum(v) / len(members) for t, v in per_type.items()},
            "signals_per_item": {t: len(v) / len(members) for t, v in per_type.items()}}


def run_queries(svc: Service, corpus: Corpus, todo: list[Query], names: dict[int, str],
                local: JsonLines, responses: JsonLines, clients: int, seed: int) -> None:
    """Each original's queries in one task: decoded once, each edit made once, hashed
    here if not cached, and matched through the service if not cached."""
    by_key: dict[str, list[Query]] = {}
    for q in todo:
        by_key.setdefault(q.key, []).append(q)

    def one(key: str) -> int:
        decoded = decode_rgb(corpus.data(key))
        for q in by_key[key]:
            data = query_bytes(corpus, q, seed, decoded)
            if q.id not in local.records:
                h = local_hashes(data)
                local.add(q.id, {"pdq": h.pdq[0].hex(), "q": h.quality, "phash": h.phash.hex()})
            if q.id not in responses.records:
                status, body = svc.upload("/v1/match?include_candidates=true", data)
                if status == 200:
                    responses.add(q.id, compact_response(body, names))
                else:
                    responses.add(q.id, {"error": status, "detail": body})
        return len(by_key[key])

    with ThreadPoolExecutor(clients) as pool:
        for _ in progress(pool.map(one, list(by_key)), len(by_key), "originals queried"):
            pass


