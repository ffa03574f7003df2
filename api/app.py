"""The app factory. No module-level state: everything hangs off `app.state.service`."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartParser

from api.abuse import BodyReadDeadline
from api.errors import install_error_handlers
from api.limits import BodyLimits, RequestLimits
from api.metrics import AdmissionCollector, HttpMetrics, make_registry
from api.observability import LoggedApp
from api.openapi import install_openapi
from api.routes import admin, health, hma, matching, media, moderation, reports
from hashdb import __version__
from hashdb.ratelimit import Admission
from hashdb.service import Service
from hashdb.settings import Settings

# Uploads are media we must never write to disk (not even a temp file): keep
# multipart files in memory. The body-size middleware bounds what that costs.
MultiPartParser.spool_max_size = 2**62


def create_app(
    settings: Settings | None = None,
    service: Service | None = None,
    on_ready: Callable[[Service], None] | None = None,
) -> FastAPI:
    """The app. `on_ready` runs once the indexes are loaded (the CLI prints how to
    call the service then, so that its example works when it is shown)."""
    settings = settings or (service.settings if service else Settings())
    owned = service is None
    svc = service or Service(settings)

    def load() -> None:
        svc.start()
        if on_ready is not None:
            on_ready(svc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Serve at once: /healthz answers while the indexes load, /readyz says when
        # they are loaded, and matching answers 503 not_ready until then.
        loader = None
        if not svc.ready:
            loader = threading.Thread(target=load, name="hashdb-index-load", daemon=True)
            loader.start()
        yield
        if loader is not None:
            await run_in_threadpool(loader.join)
        if owned:
            await run_in_threadpool(svc.close)

    # The request log and X-Request-ID wrap everything (api/observability.py).
    app = LoggedApp(
        title="hashdb",
        version=__version__,
        summary="Shared perceptual-hash database and matching service for known illegal media.",
        lifespan=lifespan,
    )
    app.state.service = svc
    install_error_handlers(app)
    install_openapi(app)
    for module in (health, matching, media, moderation, admin, reports, hma):
        app.include_router(module.router)
    registry, requests, latency = make_registry(svc)
    app.state.metrics = registry
    app.add_middleware(HttpMetrics, requests=requests, latency=latency)
    # Rate limits and the wrong-key lockout (api/abuse.py admits every caller).
    app.state.admission = admission = Admission.from_settings(settings)
    registry.register(AdmissionCollector(admission))
    app.add_middleware(BodyReadDeadline, seconds=settings.body_read_seconds, admission=admission)
    # Each route's body cap (media, JSON batches, one match, small bodies).
    app.add_middleware(RequestLimits, limits=BodyLimits.from_settings(settings))
    return app
