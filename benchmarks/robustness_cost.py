"""What hashdb's robustness costs: hashing speed in-process (with and without SSCD,
against plain PDQ measured in the same run) and the SSCD background offset a
match adds per query. The store's cost is measured by the service run
(`robustness_service.store_cost`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
from robustness_corpus import Corpus


def hashing_cost(corpus: Corpus, keys: list[str], rounds: int = 3) -> list[dict[str, object]]:
    """Images per second on one core, in-process (`hash_media`), with and without SSCD;
    plain PDQ alone is the baseline of the same run. Median of alternating rounds."""
    from hashdb.cli import pin_native_threads
    from hashdb.hashing import hash_media
    from hashdb.signals import SIGNAL_TYPES

    pin_native_threads()
    data = [corpus.data(k) for k in keys]
    everything = list(SIGNAL_TYPES.values())
    configs: dict[str, Callable[[bytes], object]] = {
        "pdq only (baseline)": lambda d: hash_media(d, [SIGNAL_TYPES["pdq"]]),
        "stored signals, no sscd": lambda d: hash_media(
            d, [t for t in everything if t.name != "sscd"]),
        "stored signals with sscd": lambda d: hash_media(d, everything),
        "query signals with sscd": lambda d: hash_media(d, everything, query=True),
    }
    for fn in configs.values():  # warm up: model load, caches
        fn(data[0])
    rates: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, fn in configs.items():
            started = time.perf_counter()
            for d in data:
                fn(d)
            rates[name].append(len(data) / (time.perf_counter() - started))
    base = statistics.median(rates["pdq only (baseline)"])
    return [{"hashing": name, "images/s/core": statistics.median(r),
             "vs pdq only": f"{statistics.median(r) / base:.2f}x"} for name, r in rates.items()]


def background_cost(vectors: np.ndarray, rounds: int = 5) -> dict[str, float]:
    """Microseconds per query of the SSCD background offset (`Background.offsets`), for
    one query at a time (an upload) and in a batch of all `vectors` ((n, 512) int8)."""
    from hashdb.background import load_background

    bg = load_background("")
    assert bg is not None
    queries = np.ascontiguousarray(vectors).view(np.uint8)
    single = queries[: min(200, len(queries))]
    bg.offsets(single[:1])  # warm up
    one, batch = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for i in range(len(single)):
            bg.offsets(single[i : i + 1])
        one.append((time.perf_counter() - started) / len(single))
        started = time.perf_counter()
        bg.offsets(queries)
        batch.append((time.perf_counter() - started) / len(queries))
    return {"background vectors": len(bg.vectors), "single query us": 1e6 * statistics.median(one),
            "batched us per query": 1e6 * statistics.median(batch)}
