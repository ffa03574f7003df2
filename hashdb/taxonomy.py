"""The label taxonomy: which labels a contribution, a filter or a correction may use.

A packaged default (`hashdb/data/taxonomy.json`) covers the categories of illegal
content consortia share; `HASHDB_TAXONOMY_FILE` replaces it with a file of the
same shape. Labels form a tree by their ids ("terrorism/glorification" is under
"terrorism"): a match filter on a label also takes its sub-labels.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hashdb.errors import InvalidRequest, UnknownLabel

_ID = re.compile(r"[a-z0-9][a-z0-9_.:/-]{0,63}")
# A media carries a few labels; a request naming more is a mistake or an attack.
MAX_LABELS = 16


@dataclass(frozen=True, slots=True)
class Label:
    id: str
    title: str
    description: str
    parent: str | None
    aliases: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "description": self.description,
                "parent": self.parent, "aliases": list(self.aliases)}


class Taxonomy:
    def __init__(self, labels: Sequence[Label], source: str) -> None:
        self.labels = tuple(labels)
        self.source = source
        self._by_name: dict[str, str] = {}
        for label in self.labels:
            for name in (label.id, *label.aliases):
                if not _ID.fullmatch(name):
                    raise ValueError(f"{source}: bad label id {name!r}")
                if name in self._by_name:
                    raise ValueError(f"{source}: label {name!r} is defined twice")
                self._by_name[name] = label.id
        self._children: dict[str, list[str]] = {}
        for label in self.labels:
            if label.parent is not None:
                self._children.setdefault(label.parent, []).append(label.id)

    @classmethod
    def load(cls, path: Path | None = None) -> Taxonomy:
        """The taxonomy in `path`, or the packaged default."""
        if path is None:
            text = (resources.files("hashdb") / "data" / "taxonomy.json").read_text()
            source = "the default taxonomy"
        else:
            text = Path(path).read_text()
            source = str(path)
        try:
            tree = json.loads(text)["labels"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{source}: not a taxonomy file ({e})") from e
        labels: list[Label] = []

        def walk(nodes: list[dict[str, Any]], parent: str | None) -> None:
            for node in nodes:
                label = Label(str(node["id"]), str(node.get("title", node["id"])),
                              str(node.get("description", "")), parent,
                              tuple(node.get("aliases", ())))
                labels.append(label)
                walk(node.get("children", []), label.id)

        walk(tree, None)
        if not labels:
            raise ValueError(f"{source}: the taxonomy has no labels")
        return cls(labels, source)

    @property
    def ids(self) -> list[str]:
        return [label.id for label in self.labels]

    def check(self, labels: Iterable[object], where: str) -> tuple[str, ...]:
        """The labels of a contribution or a correction, as ids, in order, without
        repeats. Unknown ones are refused with the list of valid ids."""
        out: list[str] = []
        for raw in labels:
            if not isinstance(raw, str):
                raise InvalidRequest("labels are strings", field=where)
            name = raw.strip().lower()
            if not name:
                continue
            found = self._by_name.get(name)
            if found is None:
                raise UnknownLabel(
                    f"unknown label {name[:64]!r}: use one of the taxonomy's labels "
                    "(GET /v1/labels)", field=where, valid=self.ids)
            out.append(found)
        if not out:
            raise InvalidRequest("at least one label is required (GET /v1/labels lists them)",
                                 field=where, valid=self.ids)
        unique = tuple(dict.fromkeys(out))
        if len(unique) > MAX_LABELS:
            raise InvalidRequest(f"at most {MAX_LABELS} labels", field=where)
        return unique

    def expand(self, labels: Iterable[str]) -> frozenset[str]:
        """A match filter: the labels named and all their sub-labels."""
        wanted = self.check(labels, "labels") if labels else ()
        out: set[str] = set()
        stack = list(wanted)
        while stack:
            name = stack.pop()
            if name not in out:
                out.add(name)
                stack.extend(self._children.get(name, ()))
        return frozenset(out)
