"""Soak: mixed matching, contribution and withdrawal for a long while at 80% of the
capacity measured in the same run, on a store of N hashes.

1. `hashdb import` loads N seeded random PDQ hashes; `hashdb serve` starts on them.
2. Capacity: for `--probe` seconds, `--workers` clients issue the mix back to back
   (closed loop); the mix's rate is the capacity of this machine, server and
   load generator together (they share the cores, as they do in every figure
   here).
3. Soak: for `--minutes`, requests are started at 80% of that rate (open loop:
   on a fixed schedule, whatever the answers' latency), the same mix:
   - 70% `POST /v1/match`, one PDQ (one in ten a stored hash, so some match);
   - 10% `POST /v1/match/batch`, 1,000 PDQs;
   - 15% `POST /v1/hashes`, 10 new PDQs (recorded when acknowledged);
   - 5% `DELETE /v1/media/{id}`, one of our acknowledged contributions.
   Every answer that is not 2xx, and every transport error, is an error. RSS is
   sampled every 5 s; its growth is measured from the end of the first minute.
4. At the end, the crash-cycle checks: kill -9, restart, then every acknowledged
   contribution present and matchable, nothing withdrawn matchable, `hashdb
   check` exits 0 (when the command exists), SQLite's integrity check ok.

Prints a table per route (count, errors, p50, p99) and the figures.

    .venv/bin/python benchmarks/soak.py [--size 1000000] [--minutes 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine, versions  # noqa: E402
from benchmarks.service_scale import HASHDB, rss_of, wait_ready, write_hashes  # noqa: E402

# The client drops an idle connection before the server would (uvicorn: 5 s), so a
# request never races the server's close of a connection it is being sent on.
KEEPALIVE = 2.0
MIX = (("match", 0.70), ("batch", 0.10), ("contribute", 0.15), ("withdraw", 0.05))


@dataclass
class Tally:
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    error_samples: list[str] = field(default_factory=list)
    late: int = 0


@dataclass
class World:
    """What the soak did that must survive: acknowledged contributions and withdrawals."""

    stored: list[str]  # hex of hashes in the store before the soak (a sample)
    contributed: dict[int, str] = field(default_factory=dict)  # media id -> hex
    withdrawn: set[int] = field(default_factory=set)
    pending_withdrawal: set[int] = field(default_factory=set)


def rand_hex(rng: random.Random) -> str:
    return rng.randbytes(32).hex()


async def one(kind: str, client: httpx.AsyncClient, world: World, rng: random.Random,
              tally: Tally) -> None:
    started = time.perf_counter()
    try:
        if kind == "match":
            value = rng.choice(world.stored) if rng.random() < 0.1 else rand_hex(rng)
            r = await client.post("/v1/match", json={"signals": [{"type": "pdq",
                                                                  "value": value}]})
        elif kind == "batch":
            queries = [{"id": i, "type": "pdq", "value": rand_hex(rng)} for i in range(1000)]
            r = await client.post("/v1/match/batch", json={"queries": queries})
        elif kind == "contribute":
            values = [rand_hex(rng) for _ in range(10)]
            r = await client.post("/v1/hashes", json={"items": [
                {"type": "pdq", "value": v, "labels": ["terrorism"]} for v in values]})
            if r.status_code == 200:
                for v, item in zip(values, r.json()["items"], strict=True):
                    world.contributed[item["media_id"]] = v
        else:
            candidates = [m for m in world.contributed
                          if m not in world.withdrawn and m not in world.pending_withdrawal]
            if not candidates:
                return
            media_id = rng.choice(candidates)
            world.pending_withdrawal.add(media_id)
            r = await client.delete(f"/v1/media/{media_id}")
            world.pending_withdrawal.discard(media_id)
            if r.status_code == 200:
                world.withdrawn.add(media_id)
        if r.status_code >= 300:
            tally.errors[kind] += 1
            if len(tally.error_samples) < 10:
                tally.error_samples.append(f"{kind}: {r.status_code} {r.text[:200]}")
    except httpx.HTTPError as e:
        tally.errors[kind] += 1
        if len(tally.error_samples) < 10:
            tally.error_samples.append(f"{kind}: {type(e).__name__} {e}")
    tally.latency[kind].append(time.perf_counter() - started)


def pick(rng: random.Random) -> str:
    x, total = rng.random(), 0.0
    for kind, share in MIX:
        total += share
        if x < total:
            return kind
    return MIX[-1][0]


async def closed_loop(url: str, key: str, world: World, seconds: float, workers: int,
                      seed: int) -> float:
    """The mix back to back from `workers` clients: requests per second."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=workers, keepalive_expiry=KEEPALIVE)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=60, limits=limits) as client:
        async def worker(i: int) -> int:
            rng, done = random.Random(seed + i), 0
            while time.monotonic() < deadline:
                await one(pick(rng), client, world, rng, tally)
                done += 1
            return done
        started = time.monotonic()
        counts = await asyncio.gather(*(worker(i) for i in range(workers)))
    return sum(counts) / (time.monotonic() - started)


async def open_loop(url: str, key: str, world: World, rate: float, seconds: float,
                    max_in_flight: int, seed: int, pid: int,
                    rss: list[tuple[float, int]]) -> Tally:
    """Requests started on a fixed schedule at `rate` per second."""
    tally = Tally()
    rng = random.Random(seed)
    in_flight: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=max_in_flight, keepalive_expiry=KEEPALIVE)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=60, limits=limits) as client:
        started = time.monotonic()
        n = 0
        next_sample = started
        while (now := time.monotonic()) - started < seconds:
            if now >= next_sample:
                rss.append((now - started, rss_of(pid)))
                next_sample += 5
            due = int((now - started) * rate)
            while n < due:
                n += 1
                if len(in_flight) >= max_in_flight:
                    tally.late += 1  # the server fell behind: counted, not queued
                    continue
                task = asyncio.create_task(one(pick(rng), client, world, rng, tally))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.sleep(0.002)
        await asyncio.gather(*in_flight)
    return tally


def serve(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    # The default abuse limits stay on: one platform's key at this load is far
    # below a matcher's budget.
    env = {**os.environ, "HASHDB_INDEX_POLL_SECONDS": "1"}
    return subprocess.Popen(
        [*HASHDB, "serve", "--data-dir", str(data_dir), "--port", str(port)],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env,  # noqa: SIM115
    )


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def final_checks(url: str, key: str, data_dir: Path, world: World, proc: subprocess.Popen[bytes],
                 port: int, log: Path) -> dict[str, Any]:
    """kill -9, restart, and check what was acknowledged."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    started = time.monotonic()
    proc = serve(data_dir, port, log)
    try:
        wait_ready(url, proc)
        restart_s = time.monotonic() - started
        kept = {m: v for m, v in world.contributed.items() if m not in world.withdrawn}
        gone = {m: world.contributed[m] for m in world.withdrawn}
        missing = matchable_withdrawn = 0
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                          timeout=120) as client:
            for items, want in ((kept, True), (gone, False)):
                pairs = list(items.items())
                for lo in range(0, len(pairs), 5000):
                    chunk = pairs[lo : lo + 5000]
                    r = client.post("/v1/match/batch", json={"queries": [
                        {"id": m, "type": "pdq", "value": v} for m, v in chunk]})
                    r.raise_for_status()
                    for res in r.json()["results"]:
                        found = res["id"] in {x["media_id"] for x in res["matches"]}
                        if want and not found:
                            missing += 1
                        if not want and found:
                            matchable_withdrawn += 1
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=600)
    check = subprocess.run([*HASHDB, "check", "--data-dir", str(data_dir)],
                           capture_output=True, text=True)
    with sqlite3.connect(data_dir / "hashdb.sqlite3") as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    return {"restart_s": restart_s, "acknowledged": len(world.contributed),
            "withdrawn": len(world.withdrawn), "missing": missing,
            "withdrawn_matchable": matchable_withdrawn,
            "hashdb_check": "absent" if "invalid choice" in check.stderr else check.returncode,
            "integrity": integrity}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--probe", type=float, default=30, help="capacity probe seconds")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--load", type=float, default=0.8, help="share of capacity")
    parser.add_argument("--seed", type=int, default=20261205)
    parser.add_argument("--port", type=int, default=8793)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(json.dumps({"seed": args.seed, "size": args.size, "machine": machine(),
                      "versions": versions(("fastapi", "uvicorn", "numpy", "httpx"))}))
    url = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory(prefix="hashdb-soak-") as tmp:
        work = Path(tmp)
        data_dir, log = work / "data", work / "serve.log"
        hashes = work / "hashes.txt"
        write_hashes(hashes, args.size, args.seed, "uniform")
        with open(hashes) as f:
            stored = [line.split()[1] for _, line in zip(range(10_000), f, strict=False)]
        subprocess.run([*HASHDB, "import", str(hashes), "--format", "local", "--member",
                        "consortium", "--labels", "terrorism", "--data-dir", str(data_dir)],
                       check=True, capture_output=True)
        key = subprocess.run([*HASHDB, "keys", "create", "--member", "platform",
                              "--roles", "contributor,matcher", "--trusted-flagger",
                              "--data-dir", str(data_dir)], check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
        proc = serve(data_dir, args.port, log)
        try:
            wait_ready(url, proc)
            world = World(stored)
            capacity = asyncio.run(closed_loop(url, key, world, args.probe, args.workers,
                                               args.seed))
            rate = capacity * args.load
            print(f"capacity {capacity:,.0f} req/s (mix, {args.workers} clients); soak at "
                  f"{rate:,.0f} req/s for {args.minutes:g} min", flush=True)
            rss: list[tuple[float, int]] = []
            tally = asyncio.run(open_loop(url, key, world, rate, args.minutes * 60,
                                          args.workers * 4, args.seed + 1, proc.pid, rss))
            rss.append((args.minutes * 60, rss_of(proc.pid)))
            checks = final_checks(url, key, data_dir, world, proc, args.port, log)
        finally:
            if proc.poll() is None:
                proc.kill()
    base = next((r for t, r in rss if t >= 60), rss[0][1])
    growth = (rss[-1][1] - base) / base
    total = sum(len(v) for v in tally.latency.values())
    errors = sum(tally.errors.values())
    print("\n| route | requests | errors | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for kind, _ in MIX:
        lat = tally.latency[kind]
        print(f"| {kind} | {len(lat):,} | {tally.errors[kind]} | {pct(lat, 50):.1f} | "
              f"{pct(lat, 99):.1f} |")
    print(f"\nrequests {total:,}, errors {errors}, started late (server behind) {tally.late}")
    print(f"RSS after 1 min {base / 2**20:,.0f} MiB, at the end {rss[-1][1] / 2**20:,.0f} MiB: "
          f"growth {growth:+.1%}")
    print("after kill -9 and restart: " + json.dumps(checks))
    for sample in tally.error_samples:
        print("  error:", sample)
    if args.json:
        args.json.write_text(json.dumps({
            "capacity_rps": capacity, "rate_rps": rate, "requests": total, "errors": errors,
            "late": tally.late, "rss": rss, "rss_growth": growth, "checks": checks,
            "routes": {k: {"n": len(v), "errors": tally.errors[k], "p50_ms": pct(v, 50),
                           "p99_ms": pct(v, 99)} for k, v in tally.latency.items()},
        }, indent=1))
    ok = (errors == 0 and growth < 0.05 and checks["missing"] == 0
          and checks["withdrawn_matchable"] == 0 and checks["integrity"] == "ok"
          and checks["hashdb_check"] in (0, "absent"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
