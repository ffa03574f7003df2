"""The `hashdb` command: serve, hash, keys, import, export."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hashdb.errors import HashdbError
from hashdb.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("data_dir", "database_url", "host", "port"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


def _store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="embedded SQLite under this folder "
                   "(default ./hashdb-data, or $HASHDB_DATA_DIR)")
    p.add_argument("--database-url", help="postgresql://... (or $HASHDB_DATABASE_URL)")


def pin_native_threads() -> None:
    """One native thread per request thread: BLAS, OpenCV and FAISS thread pools would
    otherwise fight the request threads (and each other) for the same few cores."""
    import cv2
    import faiss
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    cv2.setNumThreads(1)
    faiss.omp_set_num_threads(1)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from api import create_app
    from api.abuse import server_options
    from hashdb.service import Service

    settings = _settings(args)
    pin_native_threads()
    service = Service(settings)
    service.store.migrate()
    key = service.members.ensure_admin_key()
    base = f"http://{settings.host}:{settings.port}"
    where = settings.database_url or f"SQLite in {settings.data_dir.resolve()}"
    print(f"hashdb starting: {where}, loading the indexes...", flush=True)

    def announce(service: Service) -> None:
        sizes = ", ".join(f"{n:,} {t}" for t, n in service.follower.sizes().items())
        print(f"\nhashdb is ready on {base} ({sizes}; indexes from {service.loaded_from})",
              flush=True)
        if key:
            print(
                "\nFirst start: an admin key was created. It is shown only this once:\n\n"
                f"  export HASHDB_KEY={key}\n\n"
                "Try it:\n"
                f'  curl -s -H "Authorization: Bearer $HASHDB_KEY" -F file=@photo.jpg '
                f"{base}/v1/hash\n"
                f'  curl -s -H "Authorization: Bearer $HASHDB_KEY" '
                "-H 'content-type: application/json' "
                f"-d '{{\"signals\": [{{\"type\": \"pdq\", \"value\": \"{'0' * 64}\"}}]}}' "
                f"{base}/v1/match\n"
                f"API docs: {base}/docs\n"
                f"Transparency report (sign in with the key): {base}/reports\n",
                flush=True,
            )
        else:
            print("Keys exist already; make another with: hashdb keys create --member NAME "
                  "--roles matcher", flush=True)

    # The app builds its own service and closes it in its lifespan (saving the index
    # snapshot): uvicorn re-raises SIGTERM/SIGINT once it has shut down, so nothing
    # after uvicorn.run() runs when the server is stopped by a signal.
    service.close()
    app = create_app(settings, on_ready=announce)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level,
                **server_options(settings))
    return 0


def cmd_hash(args: argparse.Namespace) -> int:
    from hashdb.hashing import hash_media
    from hashdb.signals import SIGNAL_TYPES

    types = SIGNAL_TYPES.parse_names(args.types)
    settings = Settings()
    limits = settings.media_limits()
    failed = 0
    for path in args.paths:
        try:
            data = Path(path).read_bytes()
            media_type, signals = hash_media(data, types, limits)
            line: dict[str, Any] = {"path": path, "media_type": media_type,
                                    "signals": [s.as_json() for s in signals]}
        except (OSError, HashdbError) as exc:
            failed += 1
            code = exc.code if isinstance(exc, HashdbError) else "unreadable"
            line = {"path": path, "error": {"code": code, "message": str(exc)}}
        print(json.dumps(line), flush=True)
    return 1 if failed else 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from hashdb.service import Service

    service = Service(_settings(args))
    try:
        service.store.migrate()
        record, key = service.members.create_key(
            None, args.member, args.roles.split(","), create_member=True,
            trusted_flagger=args.trusted_flagger,
        )
    finally:
        service.close()
    print(f"key {record.key_id} for member {args.member!r} with roles "
          f"{','.join(sorted(record.roles))} (shown once):", file=sys.stderr)
    print(key)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from hashdb.service import Service
    from ingest.formats import import_file

    service = Service(_settings(args))
    try:
        service.store.migrate()
        report = import_file(service, Path(args.file), args.format, args.member,
                             args.labels.split(",") if args.labels else [])
    finally:
        service.close()
    print(json.dumps(report))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hashdb.service import Service
    from ingest.formats import export_file

    service = Service(_settings(args))
    try:
        service.store.migrate()
        out = sys.stdout if args.output in (None, "-") else open(args.output, "w")  # noqa: SIM115
        count = export_file(service, out, args.format)
        if out is not sys.stdout:
            out.close()
    finally:
        service.close()
    print(f"exported {count} signals", file=sys.stderr)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from hashdb.migrate import migrate_to_postgres, sqlite_source

    settings = _settings(args)
    # --data-dir alone names the source even when $HASHDB_DATABASE_URL is set (it may
    # well name the target).
    url = args.database_url or (None if args.data_dir else settings.database_url)
    report = migrate_to_postgres(sqlite_source(url, settings.data_dir), args.to)
    print(report.summary())
    return 0 if report.ok else 1


def cmd_check(args: argparse.Namespace) -> int:
    from hashdb.check import check_deployment

    report = check_deployment(_settings(args))
    print(json.dumps(report.as_json()) if args.json else "\n".join(report.lines()))
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hashdb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP service")
    _store_flags(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("hash", help="hash media files; JSON Lines on stdout")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--types", help="comma-separated signal types (default: all)")
    p.set_defaults(func=cmd_hash)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command",
                                                                 required=True)
    p = keys.add_parser("create", help="create a key (and the member if new)")
    _store_flags(p)
    p.add_argument("--member", required=True)
    p.add_argument("--roles", required=True, help="comma-separated: admin,contributor,"
                   "matcher,auditor")
    p.add_argument("--trusted-flagger", action="store_true")
    p.set_defaults(func=cmd_keys_create)

    p = sub.add_parser("import", help="bulk-import hashes from a file")
    _store_flags(p)
    p.add_argument("file")
    p.add_argument("--format", default="auto", help="auto, csv (ThreatExchange), local, "
                   "jsonl, vpdq (Meta's vPDQ output: one file, one video)")
    p.add_argument("--member", required=True)
    p.add_argument("--labels", help="comma-separated labels for rows that have none")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="export active hashes")
    _store_flags(p)
    p.add_argument("--format", default="jsonl", help="jsonl, csv, local")
    p.add_argument("--output", "-o")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("migrate", help="copy a SQLite deployment into an empty PostgreSQL "
                       "database, verified")
    _store_flags(p)
    p.add_argument("--to", required=True, metavar="URL", help="postgresql://... (empty)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("check", help="the indexes a starting server loads equal the store "
                       "(exit 1 and what differs when not)")
    _store_flags(p)
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.set_defaults(func=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Before FAISS loads: OpenMP reads this when it starts, and it reaches every
    # thread, where omp_set_num_threads reaches only the calling one.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except HashdbError as exc:
        print(f"hashdb: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
