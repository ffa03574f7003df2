"""Video matching on Meta's sample clips: hashdb against vPDQ's rule, in the same run.

    .venv/bin/python benchmarks/video_match.py [--scale 10000000] [--seed 1]

Every clip in ../shared/data/video-samples is contributed through the Service (a
temporary SQLite store, the same code the HTTP API calls), then every clip is
matched against all of them. The table gives, for each of the 31 pairs of the
same footage (`chair-*`, `pattern-*`), hashdb's query and compared match
percents both ways and whether the pair matched, beside vPDQ's rule (a share of
at least 80% of frames within 31 bits, either way) computed on the reference's
own per-frame hashes (`vpdq-expected/`). Pairs across families must not match.

With `--scale N`, the keyframe lookups of a 10-minute video (the query signals
of the sample clips, repeated to 600 s) are searched in one batch against an
index of N hashes with real-PDQ statistics (`benchmarks/realistic.py`): the
search half of matching a long video, timed on one thread.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks._common import print_header, print_table  # noqa: E402
from hashdb.models import Role  # noqa: E402
from hashdb.service import Service  # noqa: E402
from hashdb.settings import Settings  # noqa: E402
from hashdb.signals import SIGNAL_TYPES  # noqa: E402

SAMPLES = ROOT.parent / "shared" / "data" / "video-samples"
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def family(name: str) -> str:
    kind = name.split("-")[0]
    return kind if kind in ("chair", "pattern") else name


def vpdq_hashes(name: str) -> np.ndarray:
    """The reference's frames of quality >= 50, exact duplicates dropped (as vPDQ does)."""
    rows = [line.strip().split(",") for line in (SAMPLES / "vpdq-expected" / f"{name}.txt")
            .read_text().splitlines() if line.strip()]
    kept = list(dict.fromkeys(bytes.fromhex(r[2]) for r in rows if int(r[1]) >= 50))
    return np.frombuffer(b"".join(kept), np.uint8).reshape(-1, 32)


def vpdq_percent(query: np.ndarray, target: np.ndarray) -> float:
    """vPDQ's query match percent: frames of `query` within 31 bits of any of `target`."""
    d = _POPCOUNT[query[:, None, :] ^ target[None, :, :]].sum(axis=2)
    return round(100.0 * float((d.min(axis=1) <= 31).mean()), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=0,
                        help="also time a 10-minute video's lookups against this many hashes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results"
                        / "video_match.json")
    args = parser.parse_args()
    info = print_header("video matching: hashdb vs vPDQ's rule", args.seed,
                        ("numpy", "av", "faiss-cpu", "numba"))
    clips = {p.stem: p for p in sorted(SAMPLES.glob("*.mp4"))}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), index_snapshots=False, review_policy="live")
        service = Service(settings)
        service.start(poll=False)
        try:
            results, timings, queries = run(service, clips)
        finally:
            service.close()
    floor = settings.video_match_percent
    rows, ours_ok, vpdq_ok = [], 0, 0
    for a, b in itertools.combinations(clips, 2):
        if family(a) != family(b):
            continue
        ab, ba = results.get((a, b)), results.get((b, a))  # (query, stored) -> percents
        ours = any(r is not None and max(r) >= floor for r in (ab, ba))
        va, vb = vpdq_hashes(a), vpdq_hashes(b)
        v_ab, v_ba = vpdq_percent(va, vb), vpdq_percent(vb, va)
        theirs = max(v_ab, v_ba) >= 80
        ours_ok += ours
        vpdq_ok += theirs
        rows.append({"query": a, "stored": b,
                     "ours a->b q/c": "%s/%s" % (ab or ("-", "-")),
                     "ours b->a q/c": "%s/%s" % (ba or ("-", "-")),
                     "ours": "match" if ours else "MISS",
                     "vPDQ a->b": v_ab, "vPDQ b->a": v_ba, "vPDQ": "match" if theirs else "miss"})
    false_pairs = [(q, s) for (q, s) in results if family(q) != family(s)]
    print_table(rows, list(rows[0]))
    print(f"\nsame-footage pairs matched: hashdb {ours_ok} of {len(rows)}, vPDQ's rule "
          f"(>= 80% of frames either way, on the reference's hashes) {vpdq_ok} of {len(rows)}")
    print(f"pairs across families matched: {len(false_pairs)} {false_pairs or ''}")
    print(f"hashdb's rule: a video matches when {floor:g}% of its frames matched the stored "
          "video's, or of the stored video's seconds were matched")
    print_table([{"clip": n, "seconds to match": round(t, 2)} for n, t in timings.items()],
                ["clip", "seconds to match"])
    out = {**info, "pairs": rows, "hashdb_matched": ours_ok, "vpdq_matched": vpdq_ok,
           "false_pairs": false_pairs, "match_seconds": timings}
    if args.scale:
        out["scale"] = long_video_search(queries, args.scale, args.seed)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.json}")


def run(
    service: Service, clips: dict[str, Path]
) -> tuple[dict[tuple[str, str], tuple[float, float]], dict[str, float], list[bytes]]:
    service.members.create_key(None, "hotline", ["contributor", "matcher"], create_member=True)
    caller = service.members.acting_as("hotline", [Role.CONTRIBUTOR, Role.MATCHER])
    names = {}
    for name, path in clips.items():
        done, _, _ = service.contributions.contribute_media(caller, path.read_bytes(),
                                                            ["terrorism"])
        names[done.media_id] = name
    results: dict[tuple[str, str], tuple[float, float]] = {}
    timings: dict[str, float] = {}
    queries: list[bytes] = []
    for name, path in clips.items():
        started = time.perf_counter()
        _, signals, result = service.matcher.match_media(caller, path.read_bytes())
        timings[name] = time.perf_counter() - started
        queries.extend(s.value.raw for s in signals if s.type == "pdq")
        for m in result.media_matches:
            other = names[m.media_id]
            if other != name:
                results[name, other] = (m.query_match_percent, m.compared_match_percent)
    return results, timings, queries


def long_video_search(queries: list[bytes], n: int, seed: int) -> dict[str, float]:
    """One batched search of a 10-minute video's lookups against n realistic hashes."""
    from benchmarks.realistic import realistic_pdq
    from hashdb.index.mih import MultiIndexHammingIndex

    pdq = SIGNAL_TYPES["pdq"]
    per_second = len(queries) / 190.0  # the sample clips hold ~190 s of video
    wanted = int(600 * per_second)
    batch = np.frombuffer(b"".join(queries), np.uint8).reshape(-1, 32)
    batch = np.resize(batch, (wanted, 32))
    with threadpool_limits(1):
        print(f"\nbuilding an index of {n:,} realistic PDQ hashes...", flush=True)
        index = MultiIndexHammingIndex(pdq)
        index.add(np.arange(n, dtype=np.int64), realistic_pdq(n, seed))
        index.compact()
        index.warm_up()
        index.search(batch[:100], 31)
        started = time.perf_counter()
        hits = index.search(batch, 31)
        took = time.perf_counter() - started
    row = {"stored hashes": n, "lookups (10 min of video)": wanted, "seconds": round(took, 3),
           "lookups/s": round(wanted / took), "hits": int(len(hits.ids))}
    print_table([row], list(row))
    return row


if __name__ == "__main__":
    main()
