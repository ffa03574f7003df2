"""The whole service at scale: bulk import, restart, memory, freshness and HTTP load.

Builds a store of N seeded random PDQ hashes with `hashdb import`, starts
`hashdb serve` on it and measures, in one run:

- import time (10M target: <= 180 s) and the rebuild time on the first start;
- restart time from the index snapshot (target: /readyz 200 within 30 s);
- service RSS (target: <= 2 GB at 10M);
- freshness over HTTP: a contributed hash matches on the next request, a
  withdrawn one is gone on the next request;
- load from wrk on loopback: single-signal /v1/match (target >= 1,000 req/s,
  p99 <= 25 ms) and /v1/match/batch of 10,000 queries (target >= 8,000
  lookups/s). The baseline in the same run is /healthz (the HTTP stack alone);
- first, on a server of its own with an empty store, matching while contributions
  stream in (`--stream N`, default 1M): one client contributes N hashes through
  POST /v1/hashes, 10,000 a call, while another sends /v1/match/batch of 1,000
  queries back to back; lookups/s per 5 s window against the quiet figure on the
  same index once the stream is over (target: no window below half of it), and
  the quiet figure in calls of 10,000 (small batches against big ones).

    .venv/bin/python benchmarks/service_scale.py --size 10000000 [--json PATH]
    .venv/bin/python benchmarks/service_scale.py --only stream      # the stream alone

Needs wrk (Debian package `wrk`) for the load part; without it that part is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import print_header  # noqa: E402

HASHDB = [str(Path(sys.executable).parent / "hashdb")]

SINGLE_LUA = r"""
math.randomseed(%(seed)d)
local hex = "0123456789abcdef"
request = function()
  local t = {}
  for i = 1, 64 do
    local r = math.random(16)
    t[i] = hex:sub(r, r)
  end
  local body = '{"signals": [{"type": "pdq", "value": "' .. table.concat(t) .. '"}]}'
  return wrk.format("POST", "/v1/match", {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer %(key)s"}, body)
end
"""

BATCH_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
local f = io.open("%(body)s", "rb")
wrk.body = f:read("*all")
f:close()
"""

GET_LUA = r"""
wrk.method = "GET"
"""


def write_hashes(path: Path, n: int, seed: int, dist: str) -> None:
    """A ThreatExchange local file of n PDQ hashes: uniform, or with the bit
    statistics of real PDQ hashes (benchmarks/realistic.py)."""
    rng = np.random.default_rng(seed)
    if dist == "real":
        from benchmarks.realistic import realistic_pdq

        every = realistic_pdq(n, seed)
    with open(path, "w") as f:
        for start in range(0, n, 1_000_000):
            size = min(1_000_000, n - start)
            block = (every[start : start + size] if dist == "real"
                     else rng.integers(0, 256, (size, 32), dtype=np.uint8))
            hexes = block.tobytes().hex(" ", 32).split()
            f.write("".join(f"pdq {h}\n" for h in hexes))


def new_key(data_dir: Path, member: str, roles: str) -> str:
    """A key made by the CLI; trusted flaggers' contributions go live without review."""
    out = subprocess.run([*HASHDB, "keys", "create", "--member", member, "--roles", roles,
                          "--trusted-flagger", "--data-dir", str(data_dir)],
                         capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 900) -> float:
    start = time.monotonic()
    with httpx.Client(base_url=url, timeout=5) as client:
        while time.monotonic() - start < timeout:
            if proc.poll() is not None:
                raise RuntimeError("server exited")
            try:
                if client.get("/readyz").status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise TimeoutError("server not ready")


def serve(data_dir: Path, port: int, log: Path,
          env_extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HASHDB_INDEX_POLL_SECONDS": "1", **(env_extra or {})}
    return subprocess.Popen(
        [*HASHDB, "serve", "--data-dir", str(data_dir), "--port", str(port),
         "--log-level", "warning"],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env,  # noqa: SIM115
    )


def stop(proc: subprocess.Popen[bytes]) -> float:
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=600)
    return time.monotonic() - start


def wrk(script: str, url: str, duration: int, connections: int, workdir: Path) -> dict[str, Any]:
    lua = workdir / "wrk.lua"
    lua.write_text(script)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "60s", "--latency",
         "-s", str(lua), url],
        capture_output=True, text=True, check=True,
    ).stdout
    result: dict[str, Any] = {"raw": out}
    # "N requests in 20.02s": wrk's own Requests/sec has two decimals, too coarse
    # for batches that take seconds each.
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)\b", out)
    if m:
        seconds = float(m.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
        result["requests_per_s"] = int(m.group(1)) / seconds
    else:
        result["requests_per_s"] = 0.0
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out)
        if m:
            scale = {"us": 1e-3, "ms": 1.0, "s": 1000.0}[m.group(2)]
            result[f"p{pct}_ms"] = float(m.group(1)) * scale
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["errors"] = int(m.group(1)) if m else 0
    return result


def stream_phase(workdir: Path, port: int, n: int, seed: int, dist: str, batch: int,
                 query_batch: int, quiet_s: float) -> dict[str, Any]:
    """Matching while contributions stream in: a fresh server on an empty store,
    `n` hashes contributed through POST /v1/hashes in batches of `batch` by one
    client while another sends /v1/match/batch of `query_batch` queries back to
    back. Lookups/s are read per 5-second window during the stream, then for
    `quiet_s` seconds once it is over (the quiet figure, same index, same run);
    the target is that no window falls below half of it."""
    import threading

    data_dir = workdir / "stream-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    url = f"http://127.0.0.1:{port}"
    contributor_key = new_key(data_dir, "ngo", "contributor")
    matcher_key = new_key(data_dir, "platform", "matcher")
    rng = np.random.default_rng(seed + 7)
    if dist == "real":
        from benchmarks.realistic import realistic_pdq

        stored = realistic_pdq(n, seed + 7)
    else:
        stored = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    hexes = stored.tobytes().hex(" ", 32).split()
    bodies = [json.dumps({"items": [{"type": "pdq", "value": h, "labels": ["terrorism"]}
                                    for h in hexes[i : i + batch]]}).encode()
              for i in range(0, n, batch)]
    del hexes
    queries = rng.integers(0, 256, (query_batch, 32), dtype=np.uint8).tobytes().hex(" ", 32)
    query_body = json.dumps({"queries": [{"id": i, "type": "pdq", "value": v}
                                         for i, v in enumerate(queries.split())]}).encode()
    def headers(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    log = workdir / "stream-serve.log"
    # Capacity, not the abuse limits: the keys' rate limits are lifted for this run.
    unlimited = {"per_second": 10**9, "burst": 10**10}
    limits = json.dumps({"matcher": unlimited, "contributor": unlimited})
    proc = serve(data_dir, port, log, {"HASHDB_RATE_LIMITS": limits})
    done: list[tuple[float, float, int]] = []  # (sent, answered, lookups) per batch
    errors: dict[str, dict[int, int]] = {"match": {}, "contribute": {}}
    stop_matching = threading.Event()
    contributed = {"n": 0, "start": 0.0, "end": 0.0}

    def matcher() -> None:
        with httpx.Client(base_url=url, timeout=120, headers=headers(matcher_key)) as c:
            while not stop_matching.is_set():
                sent = time.monotonic()
                r = c.post("/v1/match/batch", content=query_body)
                if r.status_code == 200:
                    done.append((sent, time.monotonic(), query_batch))
                else:
                    errors["match"][r.status_code] = errors["match"].get(r.status_code, 0) + 1

    def contributor() -> None:
        with httpx.Client(base_url=url, timeout=300, headers=headers(contributor_key)) as c:
            contributed["start"] = time.monotonic()
            for body in bodies:
                r = c.post("/v1/hashes", content=body)
                if r.status_code == 200:
                    contributed["n"] += batch
                else:
                    bad = errors["contribute"]
                    bad[r.status_code] = bad.get(r.status_code, 0) + 1
            contributed["end"] = time.monotonic()

    try:
        wait_ready(url, proc)
        t_match = threading.Thread(target=matcher)
        t_match.start()
        time.sleep(2)
        t_contrib = threading.Thread(target=contributor)
        t_contrib.start()
        t_contrib.join()
        stream_end = time.monotonic()
        # Quiet: wait until merges are done (the server's index is compact), then measure.
        settle_start = time.monotonic()
        time.sleep(quiet_s)
        quiet_from = time.monotonic()
        time.sleep(quiet_s)
        stop_matching.set()
        t_match.join()
        # The same quiet index with calls of 10,000 queries: what small batches cost.
        big = rng.integers(0, 256, (10_000, 32), dtype=np.uint8).tobytes().hex(" ", 32)
        big_body = json.dumps({"queries": [{"id": i, "type": "pdq", "value": v}
                                           for i, v in enumerate(big.split())]}).encode()
        big_lookups, big_from = 0, time.monotonic()
        with httpx.Client(base_url=url, timeout=120, headers=headers(matcher_key)) as c:
            while time.monotonic() - big_from < quiet_s:
                if c.post("/v1/match/batch", content=big_body).status_code == 200:
                    big_lookups += 10_000
        quiet_10k = big_lookups / (time.monotonic() - big_from)
    finally:
        rss = rss_of(proc.pid)
        stop(proc)

    def rate(lo: float, hi: float) -> float:
        """Lookups/s in [lo, hi), each batch's lookups spread over its time in flight."""
        total = 0.0
        for a, b, q in done:
            overlap = min(b, hi) - max(a, lo)
            if overlap > 0:
                total += q * overlap / (b - a)
        return total / (hi - lo)

    quiet = rate(quiet_from, quiet_from + quiet_s)
    window = 5.0
    windows = []
    t = contributed["start"]
    while t + window <= stream_end:
        windows.append(rate(t, t + window))
        t += window
    after = []
    t = stream_end
    while t + window <= quiet_from:
        after.append(rate(t, t + window))
        t += window
    result = {
        "hashes": n, "batch": batch, "query_batch": query_batch,
        "contribute_s": (took := contributed["end"] - contributed["start"]),
        "contributed_per_s": contributed["n"] / max(took, 1e-9),
        "quiet_lookups_per_s": quiet,
        "quiet_10k_lookups_per_s": quiet_10k,
        "stream_windows_lookups_per_s": windows,
        "after_stream_windows_lookups_per_s": after,
        "min_window_ratio": min(windows + after) / quiet if windows and quiet else 0.0,
        "errors": errors, "rss_bytes": rss, "settle_s": quiet_from - settle_start,
        "slowest_batches": sorted(((round(b - a, 3), round(a - contributed["start"], 1))
                                   for a, b, _ in done), reverse=True)[:5],
    }
    return result


def print_stream(s: dict[str, Any]) -> None:
    windows = s["stream_windows_lookups_per_s"] + s["after_stream_windows_lookups_per_s"]
    print(f"\n| matching while {s['hashes']:,} hashes stream in (POST /v1/hashes, "
          f"{s['batch']:,} a call; /v1/match/batch of {s['query_batch']:,}) | value |")
    print("|---|---|")
    print(f"| contributions | {s['contributed_per_s']:,.0f} hashes/s "
          f"({s['contribute_s']:.0f} s), errors {s['errors']['contribute']} |")
    print(f"| quiet batch matching, same index after the stream | "
          f"{s['quiet_lookups_per_s']:,.0f} lookups/s |")
    print(f"| ... in calls of 10,000 queries | {s['quiet_10k_lookups_per_s']:,.0f} lookups/s "
          f"(calls of {s['query_batch']:,}: "
          f"{s['quiet_lookups_per_s'] / max(s['quiet_10k_lookups_per_s'], 1):.0%} of it) |")
    if windows:
        print(f"| during the stream and after, per 5 s window: min / median | "
              f"{min(windows):,.0f} / {float(np.median(windows)):,.0f} lookups/s |")
    print(f"| lowest window / quiet (target >= 0.5) | {s['min_window_ratio']:.2f} |")
    print(f"| match errors | {s['errors']['match']} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--dist", choices=["uniform", "real"], default="real",
                        help="stored hashes: uniform random, or real-PDQ statistics")
    parser.add_argument("--duration", type=int, default=20, help="seconds per wrk run")
    parser.add_argument("--workdir", type=Path, help="keep the store here (default: temp)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" /
                        "service_scale.json")
    parser.add_argument("--stream", type=int, default=1_000_000,
                        help="hashes to contribute over HTTP while matching (0: skip)")
    parser.add_argument("--stream-batch", type=int, default=10_000)
    parser.add_argument("--stream-query-batch", type=int, default=1_000)
    parser.add_argument("--only", choices=["all", "stream"], default="all")
    args = parser.parse_args()
    info = print_header("hashdb service at scale", args.seed,
                        ("numpy", "faiss-cpu", "numba", "fastapi", "uvicorn"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hashdb-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir, log = workdir / "data", workdir / "serve.log"
    shutil.rmtree(data_dir, ignore_errors=True)
    url = f"http://127.0.0.1:{args.port}"
    results: dict[str, Any] = {"size": args.size, "dist": args.dist, **info}
    if args.stream:
        s = results["stream"] = stream_phase(workdir, args.port, args.stream, args.seed,
                                             args.dist, args.stream_batch,
                                             args.stream_query_batch, 30.0)
        print_stream(s)
    if args.only == "stream":
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        return 0

    hashes = workdir / f"hashes-{args.dist}-{args.size}-{args.seed}.txt"
    if not hashes.exists():
        write_hashes(hashes, args.size, args.seed, args.dist)
    t = time.monotonic()
    subprocess.run([*HASHDB, "import", str(hashes), "--format", "local", "--member", "bulk",
                    "--labels", "terrorism", "--data-dir", str(data_dir)], check=True,
                   stdout=subprocess.DEVNULL)
    results["import_s"] = time.monotonic() - t
    print(f"import of {args.size:,} hashes: {results['import_s']:.1f} s")

    def key(member: str, roles: str) -> str:
        return new_key(data_dir, member, roles)

    matcher, contributor = key("platform", "matcher"), key("ngo", "contributor,matcher")

    proc = serve(data_dir, args.port, log)
    try:
        results["rebuild_ready_s"] = wait_ready(url, proc)
        print(f"first start (rebuild from the store): ready in {results['rebuild_ready_s']:.1f} s")
        results["rss_after_start_bytes"] = rss_of(proc.pid)

        # Freshness: next request after the write, no rebuild.
        rng = np.random.default_rng(args.seed + 1)
        value = rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex()
        query = {"signals": [{"type": "pdq", "value": value}]}
        with httpx.Client(base_url=url, timeout=60) as c:
            c.headers["Authorization"] = f"Bearer {contributor}"
            t = time.perf_counter()
            made = c.post("/v1/hashes", json={"items": [{"type": "pdq", "value": value,
                                                         "labels": ["terrorism"]}]}).json()
            found = c.post("/v1/match", json=query).json()["matches"]
            results["fresh_add_then_match_ms"] = (time.perf_counter() - t) * 1000
            media_id = made["items"][0]["media_id"]
            t = time.perf_counter()
            c.delete(f"/v1/media/{media_id}")
            gone = c.post("/v1/match", json=query).json()["matches"]
            results["fresh_withdraw_then_match_ms"] = (time.perf_counter() - t) * 1000
        results["fresh_add_found"] = [m["media_id"] for m in found] == [media_id]
        results["fresh_withdraw_gone"] = gone == []
        print(f"freshness: added then matched {results['fresh_add_found']} "
              f"({results['fresh_add_then_match_ms']:.1f} ms); withdrawn then gone "
              f"{results['fresh_withdraw_gone']} "
              f"({results['fresh_withdraw_then_match_ms']:.1f} ms)")

        if shutil.which("wrk"):
            body = workdir / "batch.json"
            queries = rng.integers(0, 256, (10_000, 32), dtype=np.uint8).tobytes().hex(" ", 32)
            body.write_text(json.dumps({"queries": [
                {"id": i, "type": "pdq", "value": v} for i, v in enumerate(queries.split())]}))
            runs = {
                "healthz": wrk(GET_LUA, url + "/healthz", args.duration, 16, workdir),
                "match_single": wrk(SINGLE_LUA % {"seed": args.seed, "key": matcher}, url,
                                    args.duration, 16, workdir),
                "match_batch_10k": wrk(BATCH_LUA % {"key": matcher, "body": body},
                                       url + "/v1/match/batch", args.duration, 2, workdir),
            }
            runs["match_batch_10k"]["lookups_per_s"] = runs["match_batch_10k"][
                "requests_per_s"] * 10_000
            # Single lookups while batches run: slowed, never stalled.
            batch_lua = BATCH_LUA % {"key": matcher, "body": body}
            (workdir / "batch.lua").write_text(batch_lua)
            background = subprocess.Popen(
                ["wrk", "-t1", "-c2", f"-d{args.duration + 4}s", "--timeout", "60s",
                 "-s", str(workdir / "batch.lua"), url + "/v1/match/batch"],
                stdout=subprocess.PIPE, text=True,
            )
            time.sleep(2)
            runs["match_single_during_batches"] = wrk(
                SINGLE_LUA % {"seed": args.seed + 2, "key": matcher}, url, args.duration, 16,
                workdir)
            background.communicate(timeout=args.duration + 120)
            results["load"] = {k: {kk: vv for kk, vv in v.items() if kk != "raw"}
                               for k, v in runs.items()}
            results["rss_after_load_bytes"] = rss_of(proc.pid)
        else:
            print("wrk not found: skipping the load part (apt-get install wrk)")
    finally:
        results["stop_s"] = stop(proc)

    proc = serve(data_dir, args.port, log)
    try:
        results["restart_ready_s"] = wait_ready(url, proc)
        results["rss_after_restart_bytes"] = rss_of(proc.pid)
    finally:
        stop(proc)

    print()
    print(f"| measure ({args.size:,} PDQ hashes, {args.dist}) | value | target |")
    print("|---|---|---|")
    print(f"| bulk import | {results['import_s']:.1f} s | <= 180 s at 10M |")
    print(f"| first start, rebuild from store | {results['rebuild_ready_s']:.1f} s | (report) |")
    print(f"| restart from snapshot to /readyz 200 | {results['restart_ready_s']:.1f} s "
          "| <= 30 s |")
    print(f"| stop (incl. snapshot save) | {results['stop_s']:.1f} s | |")
    rss = max(results.get("rss_after_load_bytes", 0), results["rss_after_start_bytes"])
    print(f"| service RSS | {rss / 2**30:.2f} GiB | <= 2 GiB |")
    print(f"| freshness: add -> match / withdraw -> match | "
          f"{results['fresh_add_found']} / {results['fresh_withdraw_gone']} | True / True |")
    if "load" in results:
        h, s, b = (results["load"][k] for k in ("healthz", "match_single", "match_batch_10k"))
        print(f"| GET /healthz (HTTP stack baseline) | {h['requests_per_s']:,.0f} req/s | |")
        print(f"| POST /v1/match, 1 signal | {s['requests_per_s']:,.0f} req/s, p50 "
              f"{s.get('p50_ms', 0):.1f} ms, p99 {s.get('p99_ms', 0):.1f} ms, errors "
              f"{s['errors']} | >= 1,000 req/s, p99 <= 25 ms |")
        print(f"| POST /v1/match/batch, 10k | {b['lookups_per_s']:,.0f} lookups/s (p50 "
              f"{b.get('p50_ms', 0):.0f} ms per batch), errors {b['errors']} "
              "| >= 8,000 lookups/s |")
        d = results["load"]["match_single_during_batches"]
        print(f"| POST /v1/match while 2 batch clients run | {d['requests_per_s']:,.0f} req/s, "
              f"p50 {d.get('p50_ms', 0):.1f} ms, p99 {d.get('p99_ms', 0):.1f} ms | not stalled |")
        print(f"| match vs /healthz | {s['requests_per_s'] / max(h['requests_per_s'], 1):.2f}x "
              "| |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
