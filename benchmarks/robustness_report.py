"""What a robustness run prints and writes: the recall, false-match, sweep, tail
model, summary and cost tables, and the chart. Formatting only: the numbers come
from robustness_analysis.py."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from robustness_analysis import (
    MATCH_TIER_PARTS,
    PHASH_THRESHOLD,
    SSCD_CANDIDATE,
    SSCD_MATCH,
    SWEEP_GROUPS,
    Sweep,
)
from robustness_corpus import PDQ_THRESHOLD
from robustness_edits import EDITS, TARGET_GROUPS
from robustness_stats import Outcome, Query, pct, recall_by
from robustness_tails import DATABASE, check_rows, per_query

from benchmarks._common import print_table

TIER_LEGEND = (
    "hashdb = the service's matches; hashdb+cand = matches and candidates "
    "(include_candidates=true); PDQ31 = plain PDQ <= 31 computed here; pHash8 = pHash <= 8; "
    "pHashN= = pHash at the threshold with plain PDQ 31's false-pair rate; svc:TYPE = the "
    "service's matches of one signal type (ablations: svc:pdq = PDQ with its variants only, "
    "svc:sscd = corrected SSCD >= 0.60 only; exact = md5/sha256)")


def fmt_rows(rows: list[dict[str, object]], keys: Iterable[str]) -> list[dict[str, object]]:
    """Recall fractions as percentages for printing."""
    wanted = set(keys)
    return [{k: pct(float(v)) if k in wanted else v for k, v in r.items()}  # type: ignore[arg-type]
            for r in rows]


def print_recall(queries: list[Query], outcomes: dict[str, Outcome]) -> dict[str, Any]:
    tiers = list(outcomes)
    per_edit = recall_by(queries, outcomes, lambda q: q.edit, list(EDITS))
    groups = list(dict.fromkeys(e.group for e in EDITS.values()))
    per_group = recall_by(queries, outcomes, lambda q: EDITS[q.edit].group, groups, "group")
    overall = recall_by(queries, outcomes,
                        lambda q: "control" if q.edit == "original" else "all edits",
                        ["all edits"], "group")
    print("\n## Recall per edit (% of member queries whose original is returned)")
    print(TIER_LEGEND)
    print_table(fmt_rows(per_edit, tiers), ["edit", "n", *tiers])
    print("\n## Recall per group (targets: " + ", ".join(TARGET_GROUPS) + ")")
    print_table(fmt_rows(per_group + overall, tiers), ["group", "n", *tiers])
    return {"tiers": tiers, "recall_per_edit": per_edit, "recall_per_group": per_group,
            "recall_overall": overall}


# --- sweeps ---------------------------------------------------------------------

SWEEP_NOTES = {
    "sscd": "score = cosine minus the query's background offset, as the service applies "
             f"it (match >= {SSCD_MATCH:.2f}, candidate >= {SSCD_CANDIDATE:.2f})",
    "sscd_raw": "raw cosine, WITHOUT the background correction: for comparison only",
}


def print_sweeps(done: list[Sweep]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in done:
        pairs, model, held = s.pairs, s.model, s.held
        assert pairs.photos is not None
        note = SWEEP_NOTES.get(s.spec.matrix, "")
        print(f"\n## Sweep: {s.spec.name}{'; ' + note if note else ''}. Recall over member "
              f"and non-member edits (%); false pairs over {pairs.n_pairs:,} non-matching "
              f"(query, original) pairs, of which {pairs.photos.n_pairs:,} photo-photo; "
              "@10M = expected false matches per query against 10M stored items like these: "
              "observed rate (\"<x\": none seen, the 95% rule-of-three bound) and the tail "
              "model's extrapolation")
        print_table(s.rows, ["threshold", *SWEEP_GROUPS, "false pairs", "photo-photo",
                             "p observed", "p model", "@10M observed", "@10M model",
                             "@10M photos"])
        params = ", ".join(f"{k}={v:.4g}" for k, v in model.params.items())
        print(f"tail model (all pairs): {model.kind} ({params}), fitted on "
              f"{model.fit_range[0]:.3g}..{model.fit_range[1]:.3g}; held-out check (fit on "
              "the queries of half the originals, counts of the other half):")
        print_table(check_rows(held), ["threshold", "observed", "predicted", "ratio"])
        print("closest non-matching pairs (one per pair of originals): "
              + "; ".join(f"{q} ~ {c} {v:.3g}" for q, c, v in s.closest[:6]))
        out[s.spec.name] = s.as_json()
    return out


def sscd_tier_rows(done: list[Sweep]) -> list[dict[str, object]]:
    """The corrected SSCD tiers at 10M stored items: counted, bounded and modelled."""
    s = next(s for s in done if s.spec.matrix == "sscd")
    assert s.pairs.halves is not None
    check_half = s.pairs.halves[1]
    rows = []
    for tier, t in (("match", SSCD_MATCH), ("candidate", SSCD_CANDIDATE)):
        k, _ = s.pairs.p_observed(t)
        kh, _ = check_half.p_observed(t)
        rows.append({
            "tier": f"{tier} (>= {t:.2f})", "false pairs (observed)": f"{k:,}/{s.pairs.n_pairs:,}",
            "@10M observed or bound": per_query(k, s.pairs.n_pairs),
            "@10M model": f"{DATABASE * s.model.p(t):.3g}",
            "@10M model fit on half": f"{DATABASE * s.held.p(t):.3g}",
            "other half: observed": kh,
            "other half: predicted": f"{s.held.p(t) * check_half.n_pairs:.2f}"})
    return rows


def print_summary(done: list[Sweep], summary: dict[str, Any]) -> list[dict[str, object]]:
    tiers = sscd_tier_rows(done)
    print("\n## SSCD (background-corrected) tiers at 10M stored items, per query: the "
          "observed count (\"<x\" = none seen: rule-of-three 95% bound), the tail model "
          "(extrapolation) fitted on all pairs and on half the queries, and that half-fit "
          "model against the other half's count")
    print_table(tiers, list(tiers[0]))
    print(f"\n## The match tier as a whole ({' OR '.join(p[0] for p in MATCH_TIER_PARTS)}; "
          "pHash is review-only in the service): false matches per query at 10M stored items")
    parts = [{**p, "false pairs (observed)": f"{p['false pairs (observed)']:,}/{p['pairs']:,}",
              "@10M model": f"{p['@10M model']:.3g}",
              "@10M model fit on half": f"{p['@10M model fit on half']:.3g}"}
             for p in summary["parts"]]
    print_table(parts, ["part", "false pairs (observed)", "distinct original pairs",
                        "photo-photo (observed)", "@10M observed", "@10M model",
                        "@10M model fit on half", "source"])
    print(f"  model extrapolation, sum of the parts (an upper bound of their union): "
          f"{summary['model sum @10M']:.3g} false matches per query at 10M")
    print(f"  observed, the union over every non-matching pair of the corpus: "
          f"{summary['union false pairs (observed)']:,} of {summary['union pairs']:,} pairs "
          f"({summary['union distinct original pairs']:,} pairs of originals; "
          f"{summary['union photo-photo (observed)']:,} of {summary['photo-photo pairs']:,} "
          f"photo-photo pairs) -> {summary['union @10M observed']} per query at 10M; "
          f"photos only: {summary['union @10M photos']} ('<' = rule-of-three bound)")
    print(f"  observed, the service's matches: {summary['service false matches (observed)']:,} "
          f"false matches in {summary['service non-matching queries']:,} non-matching queries "
          f"against {summary['service stored']:,} stored media -> "
          f"{summary['service @10M observed']} per query at 10M ('<' = rule-of-three bound)")
    return tiers

# --- chart ----------------------------------------------------------------------

CHART_TIERS = {"hashdb": "hashdb matches", "hashdb+cand": "hashdb matches + candidates",
               f"PDQ{PDQ_THRESHOLD}": f"plain PDQ <= {PDQ_THRESHOLD}",
               f"pHash{PHASH_THRESHOLD}": f"pHash <= {PHASH_THRESHOLD}"}


def draw_chart(rows: list[dict[str, object]], overall: dict[str, object], title: str,
               path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["edit"] != "original"][::-1]  # first edit on top
    y = np.arange(len(rows))
    height = 0.2
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.8))
    colours = ("#1b6ca8", "#7fb3d5", "#e07b39", "#7d7d7d")
    for i, ((tier, label), colour) in enumerate(zip(CHART_TIERS.items(), colours, strict=True)):
        values = [100 * float(r[tier]) for r in rows]  # type: ignore[arg-type]
        label = f"{label} (all edits: {100 * float(overall[tier]):.1f}%)"  # type: ignore[arg-type]
        ax.barh(y + (1.5 - i) * height, values, height, label=label, color=colour)
    ax.set_yticks(y, [f"{r['edit']}  ({EDITS[str(r['edit'])].group})" for r in rows])
    for i in range(1, len(rows)):  # a rule between groups
        if EDITS[str(rows[i]["edit"])].group != EDITS[str(rows[i - 1]["edit"])].group:
            ax.axhline(i - 0.5, color="#444444", linewidth=0.6)
    ax.set_xlim(0, 100.5)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("recall: share of edited copies whose original is returned (%)")
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="lower center", ncol=2, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0.045, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
