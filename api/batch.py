"""Reading a batch of up to 10,000 queries without holding the GIL for long.

pydantic validates a 10k-query body in one ~20 ms call that holds the GIL, and
every single lookup on the event loop waits for it. Parsing (`api.bodies.loads`)
holds it for ~1 ms a MB; the checks below are plain Python, which lets other
threads in. The route calls it in a thread: a 10,000-query body is megabytes.
"""

from __future__ import annotations

from typing import Any

from api.bodies import loads
from hashdb.errors import InvalidRequest
from hashdb.signals import HashValue, SignalType, signal_type

_FIELDS = {"id", "type", "value"}


def read_batch(raw: bytes) -> list[tuple[str | int, HashValue]]:
    """The (client id, hash) pairs of a `{"queries": [...]}` body, validated."""
    body: Any = loads(raw or b"{}")
    if not isinstance(body, dict) or not isinstance(body.get("queries"), list):
        raise InvalidRequest("queries: a list of {id, type, value} is required",
                             location=["queries"])
    if extra := set(body) - {"queries"}:
        field = sorted(extra)[0][:64]
        raise InvalidRequest(f"unexpected field {field!r}", location=[field])
    types: dict[str, SignalType] = {}
    out: list[tuple[str | int, HashValue]] = []
    for i, query in enumerate(body["queries"]):
        where = f"queries.{i}"
        if not isinstance(query, dict):
            raise InvalidRequest(f"{where}: an object {{id, type, value}} is expected",
                                 location=["queries", i])
        if missing := _FIELDS - set(query):
            field = sorted(missing)[0]
            raise InvalidRequest(f"{where}.{field}: field required",
                                 location=["queries", i, field])
        if extra := set(query) - _FIELDS:
            field = sorted(extra)[0][:64]
            raise InvalidRequest(f"{where}.{field}: unexpected field",
                                 location=["queries", i, field])
        qid, kind = query["id"], query["type"]
        if isinstance(qid, bool) or not isinstance(qid, str | int):
            raise InvalidRequest(f"{where}.id: a string or an integer is expected",
                                 location=["queries", i, "id"])
        if not isinstance(kind, str):
            raise InvalidRequest(f"{where}.type: a string is expected",
                                 location=["queries", i, "type"])
        st = types.get(kind)
        if st is None:
            st = types[kind] = signal_type(kind)
        out.append((qid, HashValue(st.name, st.parse_raw(query["value"]))))
    return out
