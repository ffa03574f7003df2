"""The OpenAPI document, held to its word by schemathesis over real HTTP.

Schemathesis reads /openapi.json from a real server and sends every operation
requests generated from it, in its four phases: the documented examples, the
boundaries of each constraint (coverage), random valid and invalid data
(fuzzing), and chains of calls that feed one answer's values into the next
request (stateful). It sends an admin key, so requests get past the key check.
Every answer must be: no 5xx, a documented status, the documented content type,
the documented shape (every error in the one error shape), and invalid data
refused. Generation is deterministic and bounded: the same requests every run.

Schemathesis' pytest plugin cannot load a schema from a fixture under pytest 9
(it writes a node attribute pytest no longer has), so the run goes through its
engine, the one its command line drives, and the tests read what it recorded.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from schemathesis.engine import Status, events, from_schema

from conftest import RunningServer, start_server
from hashdb.settings import Settings

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
)
PHASES = ("examples", "coverage", "fuzzing", "stateful")


@dataclass
class Run:
    """What the engine recorded: failed checks, errors, and each answer's status."""

    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    phases: set[str] = field(default_factory=set)
    operations: int = 0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("hashdb-data")
    # No wrong-key lockout: schemathesis tries requests without a key on purpose, and
    # a lockout (tests/test_abuse_limits.py) would then refuse its good key too.
    yield from start_server(Settings(data_dir=data_dir, index_poll_seconds=0.2,
                                     review_policy="live", key_lockout_failures=0))


@pytest.fixture(scope="module")
def run(server: RunningServer) -> Run:
    config = schemathesis.Config.from_dict({
        "headers": {"Authorization": f"Bearer {server.admin_key}"},
        "generation": {
            "max-examples": 25,
            "deterministic": True,
            # No example database: a run never depends on what an earlier run found.
            "database": "none",
            "mode": "all",
            # Besides requests with the key above, each operation once without it: its
            # 401 must be as documented too.
            "with-security-parameters": True,
        },
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        "phases": {name: {"enabled": True} for name in PHASES},
        "request-timeout": 60,
        # Nor on failures an earlier run cached (and nothing written in the work tree).
        "cache": {"enabled": False},
    })
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)
    ours = _key_ids(server)

    def before_call(context: schemathesis.HookContext, case: schemathesis.Case,
                    kwargs: dict[str, Any]) -> None:
        # Stateful chains find our own key's id (members -> keys -> revoke): revoking
        # it would turn every later request into a 401. Any other key is fair game.
        if case.path_parameters and case.path_parameters.get("key_id") in ours:
            case.path_parameters["key_id"] = "not-our-key"

    # This hook exists only at the global scope: registered for this run alone.
    hook = schemathesis.hook(before_call)
    out = Run(operations=len(schema))
    try:
        for event in from_schema(schema).execute():
            if isinstance(event, events.PhaseFinished) and event.status != Status.SKIP:
                out.phases.add(event.phase.name.value)
            elif isinstance(event, events.ScenarioFinished):
                _record(event, out)
            elif isinstance(event, events.NonFatalError):
                out.errors.append(f"{event.label}: {event.info.format()}")
            elif isinstance(event, events.FatalError):
                raise event.exception
    finally:
        schemathesis.hooks.unregister(hook)
    return out


def _key_ids(server: RunningServer) -> set[str]:
    response = server.client(server.admin_key).get("/v1/members/admin/keys")
    response.raise_for_status()
    return {key["key_id"] for key in response.json()["keys"]}


def _record(event: events.ScenarioFinished, out: Run) -> None:
    recorder = event.recorder
    for case_id, interaction in recorder.interactions.items():
        if interaction.response is not None:
            # Per operation: a stateful scenario chains several.
            operation = recorder.cases[case_id].value.operation.label
            out.statuses[operation][interaction.response.status_code] += 1
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.status == Status.FAILURE and check.failure_info is not None:
                failure = check.failure_info.failure
                operation = recorder.cases[case_id].value.operation.label
                out.failures.append(f"{operation}: {failure.title}\n{failure.message}\n"
                                    f"{check.failure_info.code_sample}")


def test_every_phase_ran_on_every_operation(run: Run) -> None:
    assert run.phases >= set(PHASES), run.phases
    assert run.operations >= 25
    assert len(run.statuses) == run.operations, sorted(run.statuses)
    assert not run.errors, "\n\n".join(run.errors)


def test_every_operation_was_exercised_past_the_key_check(run: Run) -> None:
    locked_out = [label for label, seen in run.statuses.items()
                  if not set(seen) - {401, 403}]
    assert not locked_out, locked_out
    # And most reached their success path (the examples in the document give valid
    # hashes and labels; the chains reuse the ids that come back), not only refusals.
    succeeded = [label for label, seen in run.statuses.items()
                 if any(200 <= status < 300 for status in seen)]
    assert len(succeeded) >= 20, sorted(set(run.statuses) - set(succeeded))


def test_no_server_error_and_every_answer_as_documented(run: Run) -> None:
    # Each failure says which check, the answer, and a curl command to reproduce it.
    unique = sorted(set(run.failures))
    assert not unique, f"{len(unique)} failures:\n\n" + "\n\n".join(unique)
    server_errors = {label: n for label, seen in run.statuses.items()
                     if (n := sum(c for status, c in seen.items() if status >= 500))}
    assert not server_errors, server_errors


def test_the_document_declares_what_the_api_does(server: RunningServer) -> None:
    spec = server.client().get("/openapi.json").json()
    text = json.dumps(spec)
    # Every reference resolves (no `#/$defs/...` copied from a model's own schema).
    refs = set(re.findall(r'"\$ref": "([^"]+)"', text))
    defined = {f"#/components/{kind}/{name}" for kind in ("schemas", "examples")
               for name in spec["components"].get(kind, {})}
    assert refs and refs <= defined, refs - defined
    assert "$defs" not in text
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            # Validation errors are 400 in the one shape, never FastAPI's 422.
            assert "422" not in responses, (method, path)
            errors = {s: r for s, r in responses.items() if int(s) >= 400}
            assert errors or path == "/healthz", (method, path)
            for status, response in errors.items():
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
            if path.startswith("/v1/"):
                assert operation["security"] == [{"bearer": []}], (method, path)
                # 403 only where a role or the member is checked (not /v1/labels).
                assert {"401", "429", "503"} <= set(responses), (method, path)
            if "requestBody" in operation:
                assert {"400", "413"} <= set(responses), (method, path)
            if "{" in path:
                assert "404" in responses, (method, path)
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == [
        "text/plain"]
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]
