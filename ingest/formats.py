"""Bulk interchange formats for hash lists.

- `csv`: ThreatExchange's `signal_type,signal_str,collab,category,tags` (header optional),
  as `threatexchange dataset -P --csv` writes it: its category is an opinion on the
  signal, not a label (`_PYTX_OPINIONS`), and a `NEGATIVE_CLASS` row (a false positive,
  or test data) is not imported; hashdb's own export puts a label there
- `local`: ThreatExchange's local file, lines of `<signal_type> <hash>`
- `jsonl`: one `{"type", "value", "labels"?, "quality"?, "timestamp"?, "media_key"?,
  "variant"?}` per line
- `vpdq`: Meta's vPDQ output for one video, lines of `frame,quality,pdq_hex,timestamp`:
  one media whose keyframes are the first frame of each `frame_interval` seconds,
  without frames within `FRAME_DEDUP` bits of the last one kept (as hashdb samples
  videos itself); vPDQ gives no borders or regions, so those are not stored
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hashdb.errors import HashdbError, InvalidRequest
from hashdb.models import Role

if TYPE_CHECKING:
    from hashdb.importing import HashItem
    from hashdb.service import Service

CHUNK = 1_000_000
FRAME_DEDUP = 4
# python-threatexchange's opinion categories (`AggregateSignalOpinionCategory`).
_PYTX_OPINIONS = frozenset({"negative_class", "investigation_seed", "positive_class",
                            "disputed"})
# ThreatExchange names some types differently.
_ALIASES = {"pdq": "pdq", "md5": "md5", "video_md5": "md5", "photo_md5": "md5",
            "sha256": "sha256", "video_sha256": "sha256", "phash": "phash"}


def _detect(path: Path) -> str:
    if path.suffix == ".csv":
        return "csv"
    if path.suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    return "local"


def read_items(
    lines: IO[str],
    fmt: str,
    default_labels: list[str],
    media_key: str | None = None,
    frame_interval: float = 0.25,
) -> Iterator[HashItem]:
    from hashdb.importing import HashItem

    if fmt == "csv":
        for n, row in enumerate(csv.reader(lines), 1):
            if not row or row[0].startswith("#") or (n == 1 and row[0] == "signal_type"):
                continue
            category = row[3].strip() if len(row) > 3 else ""
            if category.lower() == "negative_class":
                continue
            if category.lower() in _PYTX_OPINIONS:
                category = ""
            labels = [x for x in ([category] + (row[4].split(" ") if len(row) > 4 else [])) if x]
            yield HashItem(_ALIASES.get(row[0].lower(), row[0]), row[1],
                           [*labels, *default_labels] or default_labels,
                           source=row[2] if len(row) > 2 and row[2] else None)
    elif fmt == "local":
        aliases: dict[str, str] = {}
        for line in lines:
            parts = line.split()
            if len(parts) != 2:
                if not parts or parts[0].startswith("#"):
                    continue
                raise InvalidRequest(f"expected '<signal_type> <hash>', got {line.strip()!r}")
            kind = aliases.get(parts[0])
            if kind is None:
                kind = aliases[parts[0]] = _ALIASES.get(parts[0].lower(), parts[0])
            yield HashItem(kind, parts[1], default_labels)
    elif fmt == "jsonl":
        for line in lines:
            if not line.strip():
                continue
            obj: dict[str, Any] = json.loads(line)
            yield HashItem(obj["type"], obj["value"], obj.get("labels") or default_labels,
                           obj.get("media_key"), obj.get("timestamp"), obj.get("quality"),
                           obj.get("note"), obj.get("source"), obj.get("variant"))
    elif fmt == "vpdq":
        yield from _vpdq_items(lines, default_labels, media_key, frame_interval)
    else:
        raise InvalidRequest(f"unknown format {fmt!r}: use csv, local, jsonl or vpdq")


def _vpdq_items(
    lines: IO[str], labels: list[str], media_key: str | None, frame_interval: float
) -> Iterator[HashItem]:
    from hashdb.importing import HashItem

    last: int | None = None
    next_time = 0.0
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.strip().split(",")
        try:
            _, quality, value, at = int(parts[0]), int(parts[1]), parts[2], float(parts[3])
            bits = int(value, 16)
        except (ValueError, IndexError):
            raise InvalidRequest(f"line {n}: expected 'frame,quality,pdq_hex,timestamp', "
                                 f"got {line.strip()[:80]!r}") from None
        if at + 1e-6 < next_time:
            continue
        next_time = (int(at / frame_interval + 1e-6) + 1) * frame_interval
        if last is not None and (bits ^ last).bit_count() <= FRAME_DEDUP:
            continue
        last = bits
        yield HashItem("pdq", value, labels, media_key=media_key, timestamp=at, quality=quality)


def import_file(
    service: Service, path: Path, fmt: str, member: str, labels: list[str]
) -> dict[str, int]:
    from tqdm import tqdm

    if service.store.get_member(member) is None:
        service.members.create_member(None, member, False)
    caller = service.members.acting_as(member, [Role.CONTRIBUTOR])
    session = service.contributions.start_import(caller)
    fmt = _detect(path) if fmt == "auto" else fmt
    created = existing = rejected = 0
    with open(path, encoding="utf-8") as lines, tqdm(
        unit=" hashes", disable=not sys.stderr.isatty(), unit_scale=True
    ) as bar:
        # A vPDQ file is one video: its frames form one media.
        key = f"vpdq:{path.name}" if fmt == "vpdq" else None
        items = read_items(lines, fmt, labels, key,
                           service.settings.video_stored_frame_seconds)
        while True:
            chunk = [item for _, item in zip(range(CHUNK), items, strict=False)]
            if not chunk:
                break
            try:
                made, had, refused = service.contributions.import_hashes(caller, chunk, session)
            except HashdbError as exc:
                raise InvalidRequest(f"import stopped: {exc.message}", **exc.details) from exc
            created, existing, rejected = created + made, existing + had, rejected + refused
            bar.update(len(chunk))
    return {"created": created, "existing": existing, "rejected": rejected}


def export_file(service: Service, out: IO[str], fmt: str) -> int:
    after, count = 0, 0
    writer = csv.writer(out) if fmt == "csv" else None
    if writer:
        writer.writerow(["signal_type", "signal_str", "collab", "category", "tags"])
    while True:
        rows = service.contributions.export_signals(after, CHUNK)
        if not rows:
            return count
        for hit, quality in rows:
            if fmt == "jsonl":
                obj: dict[str, Any] = {"type": hit.value.type, "value": hit.value.hex,
                                       "labels": list(hit.labels), "media_id": hit.media_id,
                                       "contributor": hit.contributor}
                if quality is not None:
                    obj["quality"] = quality
                if hit.timestamp is not None:
                    obj["timestamp"] = hit.timestamp
                if hit.variant is not None:
                    obj["variant"] = hit.variant
                out.write(json.dumps(obj) + "\n")
            elif writer is not None:
                labels = list(hit.labels)
                writer.writerow([hit.value.type, hit.value.hex, hit.contributor,
                                 labels[0] if labels else "", " ".join(labels[1:])])
            elif fmt == "local":
                out.write(f"{hit.value.type} {hit.value.hex}\n")
            else:
                raise InvalidRequest(f"unknown format {fmt!r}: use jsonl, csv or local")
            count += 1
        after = rows[-1][0].signal_id

