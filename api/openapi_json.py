"""Writes the OpenAPI document to a file (`make openapi`):

    .venv/bin/python -m api.openapi_json docs/openapi.json
"""

from __future__ import annotations

import sys
from pathlib import Path

from api.openapi import document, dumps


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m api.openapi_json OUTPUT.json", file=sys.stderr)
        return 2
    Path(argv[0]).write_text(dumps(document()), encoding="utf-8")
    print(f"wrote {argv[0]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
