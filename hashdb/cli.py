"""The `hashdb` command: serve, hash, match, keys, import, export, migrate, check."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hashdb.errors import HashdbError

if TYPE_CHECKING:
    from hashdb.client import Client, HashedMedia, MatchResult
    from hashdb.client.files import FileError
    from hashdb.settings import Settings
    from ingest.media import MediaLimits


def _settings(args: argparse.Namespace) -> Settings:
    from hashdb.settings import Settings

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
    import faiss

    from hashdb.client.files import pin_hashing_threads

    pin_hashing_threads()
    faiss.omp_set_num_threads(1)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from api import create_app
    from api.abuse import server_options
    from api.observability import configure_logging
    from hashdb import __version__
    from hashdb.service import Service

    settings = _settings(args)
    # Logs (ours, uvicorn's, the libraries') on stderr, JSON by default; what is
    # printed below is for the person who started the server, on stdout.
    level = args.log_level or settings.log_level
    configure_logging(settings.log_format, level)
    log = logging.getLogger("hashdb.serve")
    pin_native_threads()
    # Request threads hand the GIL over after 1 ms instead of 5: a batch match (mostly
    # in numba, without the GIL) waits less behind a bulk contribution's Python.
    sys.setswitchinterval(0.001)
    service = Service(settings)
    service.store.migrate()
    key = service.members.ensure_admin_key()
    base = f"http://{settings.host}:{settings.port}"
    where = settings.database_url or f"SQLite in {settings.data_dir.resolve()}"
    print(f"hashdb starting: {where}, loading the indexes...", flush=True)
    # Never the database URL in the log: it may hold a password.
    log.info("hashdb starting", extra={"version": __version__, "host": settings.host,
                                       "port": settings.port,
                                       "store": type(service.store).__name__})

    def announce(service: Service) -> None:
        sizes = ", ".join(f"{n:,} {t}" for t, n in service.follower.sizes().items())
        log.info("hashdb ready", extra={"indexes": service.follower.sizes(),
                                        "loaded_from": service.loaded_from,
                                        "cursor": service.follower.cursor})
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
    # uvicorn's access log is off: its line holds the raw path and query string (a
    # hash may be in either), and ours (api/observability.py) says more.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=level,
                log_config=None, access_log=False, **server_options(settings))
    return 0


def cmd_hash(args: argparse.Namespace) -> int:
    from functools import partial

    from hashdb.client.files import map_files, signals_line, walk

    types = _type_names(args.types)
    work = partial(signals_line, types=types, limits=_media_limits())
    failed = 0
    for ok, line in map_files(work, walk(args.paths), args.jobs):
        failed += not ok
        print(line, flush=True)
    return 1 if failed else 0


def cmd_match(args: argparse.Namespace) -> int:
    from functools import partial
    from itertools import batched

    from tqdm import tqdm

    from hashdb.client import Client, ClientError
    from hashdb.client.files import FileError, map_files, query_signals, walk

    url, key = args.url or os.environ.get("HASHDB_URL"), args.key or os.environ.get("HASHDB_KEY")
    if not url or not key:
        print("hashdb: give the server's --url and a matcher --key (or $HASHDB_URL and "
              "$HASHDB_KEY)", file=sys.stderr)
        return 2
    types = _type_names(args.types)
    options = {"max_distance": args.max_distance, "include_disputed": args.include_disputed,
               "labels": args.labels, "include_candidates": args.include_candidates,
               "min_quality": args.min_quality}
    work = partial(query_signals, types=types, limits=_media_limits())
    # The bar's total costs a second walk of the folders: only when someone sees it.
    # No monitor thread: the pool forks its workers once the bar exists, and a
    # process with threads forks unsafely (hashdb.client.files would fall back to a
    # slower fork server).
    tqdm.monitor_interval = 0
    shown = sys.stderr.isatty()
    total = sum(1 for _ in walk(args.paths)) if shown else None
    failed = 0
    # Hashing runs ahead while a batch is on the network.
    hashed = map_files(work, walk(args.paths), args.jobs, ahead=2 * args.batch)
    with Client(url, key, timeout=args.timeout) as client, \
            tqdm(total=total, unit="file", disable=not shown, file=sys.stderr) as bar:
        for batch in batched(hashed, args.batch):
            try:
                results = _match_each(client, [m for _, m in batch], options)
            except ClientError as exc:
                # The server or the key, not the files: every batch would fail alike.
                print(f"hashdb: {exc}", file=sys.stderr)
                return 2
            for path, result in zip((p for p, _ in batch), results, strict=True):
                failed += isinstance(result, FileError)
                print(json.dumps(_match_line(path, result, args.include_candidates)),
                      flush=True)
            bar.update(len(batch))
    return 1 if failed else 0


def _match_each(
    client: Client, hashed: list[HashedMedia | FileError], options: dict[str, Any]
) -> list[MatchResult | FileError]:
    """The answer for each file of a batch, in order: matched in few requests; when
    one fails, file by file, so that a refused file (a video too long for one
    request) fails alone. Raises ClientError when the server cannot be reached or
    refuses the key."""
    from hashdb.client import ClientError, HashedMedia
    from hashdb.client.files import FileError

    media = [m for m in hashed if isinstance(m, HashedMedia)]
    found: list[MatchResult | FileError]
    try:
        found = list(client.match_media(media, **options))
    except ClientError as exc:
        if exc.status is None or exc.status in (401, 403):
            raise
        if len(media) == 1:
            found = [FileError("", exc.code, exc.message)]
        else:
            found = [_match_each(client, [m], options)[0] for m in media]
    answers = iter(found)
    return [m if isinstance(m, FileError) else next(answers) for m in hashed]


def _match_line(path: str, result: MatchResult | FileError,
                candidates: bool) -> dict[str, Any]:
    """`hashdb match`'s JSON line for one file."""
    from hashdb.client.files import FileError

    if isinstance(result, FileError):
        return {**result.as_json(), "path": path}  # a request's error knows no path
    line = {"path": path, "media_type": result.media_type,
            "matches": [m.as_json() for m in result.matches]}
    if candidates:
        line["candidates"] = [m.as_json() for m in result.candidates]
    if result.media_type == "video":
        line["media_matches"] = [m.as_json() for m in result.media_matches]
        if candidates:
            line["media_candidates"] = [m.as_json() for m in result.media_candidates]
    return line


def _media_limits() -> MediaLimits:
    """What decoding one file may cost: the server's limits (HASHDB_* variables)."""
    from hashdb.settings import Settings

    return Settings().media_limits()


def _type_names(names: str | None) -> list[str] | None:
    """Signal type names, checked before any work starts (None: all of them)."""
    from hashdb.signals import SIGNAL_TYPES

    return None if names is None else [t.name for t in SIGNAL_TYPES.parse_names(names)]


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


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _jobs_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("-j", "--jobs", type=_positive, metavar="N",
                   help="processes hashing in parallel (default: one per core)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hashdb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP service")
    _store_flags(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"],
                   help="default info, or $HASHDB_LOG_LEVEL; $HASHDB_LOG_FORMAT: json or text")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "hash", help="hash media files and folders on every core; JSON Lines on stdout",
        description="Hashes each file named, and every file under each folder named "
        "(recursively, sorted by name), in parallel; one JSON line per file, in that "
        "order: {path, media_type, signals} or {path, error: {code, message}}.",
        epilog="exit status: 0 when every file was hashed, 1 if any was not (its line "
        "says why), 2 on a usage error")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a media file or a folder")
    p.add_argument("--types", help="comma-separated signal types (default: all)")
    _jobs_flag(p)
    p.set_defaults(func=cmd_hash)

    p = sub.add_parser(
        "match", help="match media files and folders against a server, hashing them "
        "here; JSON Lines on stdout",
        description="Hashes each file named, and every file under each folder named "
        "(recursively, sorted by name), on every core, with the server's own code: "
        "the media never leave this machine, only their hashes are sent, in batches. "
        "One JSON line per file, in that order: {path, media_type, matches} (and "
        "media_matches for a video: the stored videos it matches as a whole), or "
        "{path, error: {code, message}} for a file that could not be hashed or "
        "matched. A progress bar shows on stderr when it is a terminal.",
        epilog="exit status: 0 when every file was matched (with or without matches), "
        "1 if any file failed (its line says why), 2 on a usage error, a key the "
        "server refuses, or a server that cannot be reached")
    p.add_argument("paths", nargs="+", metavar="PATH", help="a media file or a folder")
    p.add_argument("--url", help="the server, e.g. https://hashdb.example.org "
                   "(or $HASHDB_URL)")
    p.add_argument("--key", help="a key with the matcher role (or $HASHDB_KEY, which "
                   "keeps it out of the process list)")
    p.add_argument("--types", help="comma-separated signal types to hash (default: all, "
                   "as the server hashes an upload; fewer find less)")
    p.add_argument("--batch", type=_positive, default=100, metavar="N",
                   help="files per request (default 100; a video goes alone)")
    _jobs_flag(p)
    p.add_argument("--max-distance", type=int, help="a Hamming budget for binary types "
                   "(default: each type's threshold)")
    p.add_argument("--include-disputed", action="store_true")
    p.add_argument("--labels", help="comma-separated: only matches with any of them")
    p.add_argument("--include-candidates", action="store_true",
                   help="also the review band (candidates): not safe to act on unseen")
    p.add_argument("--min-quality", type=int, help="PDQ quality floor (default 50)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request "
                   "(default 60); a failed request is retried with backoff")
    p.set_defaults(func=cmd_match)

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
