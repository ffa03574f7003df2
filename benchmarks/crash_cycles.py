"""Crash cycles, long: kill -9 during contribution and withdrawal, many times over.

Each cycle: `--threads` clients contribute batches through `POST /v1/hashes` and
withdraw some of what they contributed (`DELETE /v1/media/{id}`), recording what
was acknowledged; at a random moment within `--seconds` (every third cycle: just
after the server wrote an index snapshot) the `hashdb serve` process is killed
with SIGKILL (`--kill-postgres`: every PostgreSQL process instead, on a private
server, while hashdb keeps running). Then `hashdb check` runs on what the crash
left, the server restarts, and everything acknowledged over all cycles so far is
verified over HTTP: present and matchable under its media id, withdrawn ones not
matchable, requests left without an answer applied whole or not at all. The
driver is tests/crash_support.py, shared with tests/test_crash_cycles.py.

Prints a row per cycle and a summary; exits 1 if anything was lost.

    .venv/bin/python benchmarks/crash_cycles.py --cycles 20
    .venv/bin/python benchmarks/crash_cycles.py --store postgres --cycles 10
    .venv/bin/python benchmarks/crash_cycles.py --store postgres --kill-postgres --cycles 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks._common import print_header, print_table  # noqa: E402
from crash_processes import DatabaseCrash, Deployment  # noqa: E402
from crash_support import CrashRun, CycleResult  # noqa: E402

COLUMNS = ["cycle", "killed", "moment", "acked items", "new", "withdrawn", "in doubt",
           "restart s", "server loaded", "check loaded", "check", "integrity", "lost",
           "withdrawn matchable", "partial"]


@contextmanager
def postgres(args: argparse.Namespace) -> Iterator[tuple[str, DatabaseCrash | None]]:
    """The database URL, and the server to kill when asked to kill PostgreSQL."""
    if args.kill_postgres:
        from pg_private import private_postgres

        with private_postgres() as pg:
            yield pg.url, pg
    elif args.database_url:
        yield args.database_url, None
    else:
        from postgres_schemas import postgres_schema

        with postgres_schema() as url:
            yield url, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--kill-postgres", action="store_true",
                        help="kill -9 PostgreSQL (a private server) instead of hashdb")
    parser.add_argument("--database-url", help="with --store postgres: this database "
                        "(default: a temporary schema on the test server)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="load per cycle before the kill, at most")
    parser.add_argument("--batch-items", type=int, default=50)
    parser.add_argument("--withdraw-share", type=float, default=0.1,
                        help="share of requests that withdraw a media")
    parser.add_argument("--snapshot-every", type=int, default=1000,
                        help="HASHDB_SNAPSHOT_EVERY_CHANGES: small, so kills meet fresh "
                        "snapshots and half-written ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the data here (default: a "
                        "temporary directory, removed)")
    parser.add_argument("--json", type=Path, help="write the rows and summary here")
    args = parser.parse_args()
    if args.kill_postgres:
        args.store = "postgres"

    info = print_header("crash cycles", args.seed, ("fastapi", "uvicorn", "psycopg", "numpy"))
    print(f"store: {args.store}; killing: {'postgres' if args.kill_postgres else 'hashdb'}; "
          f"{args.cycles} cycles of up to {args.seconds} s, {args.threads} threads, "
          f"{args.batch_items} items a request, {args.withdraw_share:.0%} withdrawals, "
          f"snapshot every {args.snapshot_every} changes", flush=True)

    results: list[CycleResult] = []
    with ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="hashdb-crash-")))
        url, database = (stack.enter_context(postgres(args)) if args.store == "postgres"
                         else (None, None))
        deployment = Deployment(workdir / "data", url, snapshot_every=args.snapshot_every)
        run = CrashRun(deployment, workdir, threads=args.threads, seconds=args.seconds,
                       batch_items=args.batch_items, withdraw_share=args.withdraw_share,
                       seed=args.seed, database=database)
        kill = "postgres" if args.kill_postgres else "server"
        started = time.monotonic()
        try:
            for n in range(1, args.cycles + 1):
                moment = "after-snapshot" if n % 3 == 0 else "random"
                result = run.cycle(n, moment, kill)
                results.append(result)
                row = result.row()
                print(" | ".join(f"{c}: {row[c]}" for c in COLUMNS)
                      + f" | answers: {dict(sorted(result.answers.items()))}", flush=True)
                if not result.ok:
                    print(result.check.output[-3000:], result.thread_errors,
                          result.verification.partial[:5], flush=True)
        finally:
            run.close()
        final = deployment.check()
        elapsed = time.monotonic() - started

    print()
    print_table([r.row() for r in results], COLUMNS)
    summary = summarize(results, final.returncode, elapsed)
    print()
    for key, value in summary.items():
        print(f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "args": {k: str(v) for k, v in
                                                               vars(args).items()},
                                         "rows": [r.row() for r in results],
                                         "summary": summary}, indent=2))
    return 0 if summary["items lost"] == 0 and summary["all checks ok"] else 1


def summarize(results: list[CycleResult], final_check: int, elapsed: float) -> dict[str, object]:
    last = results[-1].verification if results else None
    restarts = [r.restart_seconds for r in results if r.restart_seconds >= 0]
    answers: Counter[str] = Counter()
    for r in results:
        answers.update(r.answers)
    return {
        "cycles": len(results),
        "acknowledged items": last.acknowledged_items if last else 0,
        "acknowledged withdrawals": last.withdrawn if last else 0,
        "requests in doubt (no answer)": results[-1].doubtful if results else 0,
        "  of which applied whole": last.doubtful_applied if last else 0,
        "  withdrawals in doubt (applied / not)": (
            f"{last.withdraw_doubt_gone} / {last.withdraw_doubt_kept}" if last else "0 / 0"),
        "items lost": sum(len(r.verification.missing) for r in results),
        "withdrawn items matchable": sum(len(r.verification.withdrawn_matchable)
                                         for r in results),
        "requests half-applied": sum(len(r.verification.partial) for r in results),
        "hashdb check failures": sum(r.check.returncode != 0 for r in results)
        + (final_check != 0),
        "integrity failures": sum(r.integrity not in ("ok", "n/a") for r in results),
        "restart (or recovery) seconds, median / max": (
            f"{statistics.median(restarts):.2f} / {max(restarts):.2f}" if restarts else "-"),
        "did not recover by itself": sum(r.restart_seconds < 0 for r in results),
        "answers": dict(sorted(answers.items())),
        "all checks ok": all(r.ok for r in results) and final_check == 0,
        "wall seconds": round(elapsed),
    }


if __name__ == "__main__":
    sys.exit(main())
