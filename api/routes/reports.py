"""Transparency reports: /v1/reports/transparency (JSON, CSV) and /reports, a page
with charts drawn on the server, readable without JavaScript.

The page sits behind the same keys as the API. A browser signs in once with a
form (`/reports/login`): the key is then kept in an HttpOnly, SameSite=Strict
cookie, which only these read-only report routes accept (never a route that
writes, so the cookie cannot be used to forge a change).
"""

from __future__ import annotations

import csv
import io
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from api.abuse import admitted_caller
from api.answers import TransparencyReport
from api.deps import ServiceDep
from api.openapi import errors
from api.report_page import CSP, render_login, render_report
from api.responses import json_response
from hashdb.errors import HashdbError, Unauthorized
from hashdb.models import Caller

router = APIRouter(tags=["reports"])

COOKIE = "hashdb_key"
_FROM = Query(alias="from", description="a date (2026-11-01) or ISO time; default: 30 days "
              "before `to`")
_TO = Query(alias="to", description="a date or ISO time, exclusive; default: now")
_BUCKET = Query(description="time-series step: minute, hour, day or week (default: by span)")


def _key(request: Request) -> str | None:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return key.strip()
    return request.cookies.get(COOKIE) or None


async def report_caller(request: Request, service: ServiceDep) -> Caller:
    """The caller of a report route: the Authorization header, or the page's cookie."""
    return admitted_caller(request, service, _key(request))


ReportCaller = Annotated[Caller, Depends(report_caller)]


@router.get(
    "/v1/reports/transparency",
    response_model=TransparencyReport,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}},
                     "description": "the report as JSON, or with `format=csv` as CSV "
                                    "(section,key,value)"},
               **errors(role=False)},
)
def transparency(
    caller: ReportCaller,
    service: ServiceDep,
    start: Annotated[str | None, _FROM] = None,
    end: Annotated[str | None, _TO] = None,
    bucket: Annotated[str | None, _BUCKET] = None,
    format: Literal["json", "csv"] = "json",
) -> Response:
    """The transparency report for a period, computed from the audit trail:
    contributions per label and source, review, matches per label and member,
    disputes and their outcomes, feedback, withdrawals, and a time series. Admins
    and auditors get the whole consortium; a member gets its own figures."""
    report = service.audit.report(caller, start, end, bucket)
    if format == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(report.csv_rows())
        name = f"hashdb-transparency-{report.as_json()['period']['from'][:10]}.csv"
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})
    return json_response(report.as_json())


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={
        "Content-Security-Policy": CSP, "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})


@router.get("/reports", include_in_schema=False)
def reports_page(
    request: Request,
    service: ServiceDep,
    start: Annotated[str | None, _FROM] = None,
    end: Annotated[str | None, _TO] = None,
    bucket: Annotated[str | None, _BUCKET] = None,
) -> Response:
    try:
        caller = admitted_caller(request, service, _key(request))
    except Unauthorized:
        return _html(render_login(), 401)
    try:
        report = service.audit.report(caller, start, end, bucket).as_json()
    except HashdbError as e:
        # A bad period typed into the form: show the default period and say why.
        report = service.audit.report(caller).as_json()
        report["notice"] = e.message
    query = {k: v for k, v in (("from", start), ("to", end), ("bucket", bucket)) if v}
    base = "/v1/reports/transparency"
    return _html(render_report(
        report, member=caller.member.name,
        csv_url=f"{base}?{urlencode({**query, 'format': 'csv'})}",
        json_url=f"{base}?{urlencode(query)}" if query else base,
        period_from=start or "", period_to=end or ""))


@router.post("/reports/login", include_in_schema=False)
async def login(request: Request, service: ServiceDep) -> Response:
    async with request.form(max_files=0, max_fields=4) as form:
        key = form.get("key")
    try:
        admitted_caller(request, service, key.strip() if isinstance(key, str) else None)
    except Unauthorized as e:
        return _html(render_login(e.message), 401)
    response = RedirectResponse("/reports", status_code=303)
    response.set_cookie(COOKIE, key.strip() if isinstance(key, str) else "", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")
    return response


@router.post("/reports/logout", include_in_schema=False)
def logout() -> Response:
    response = RedirectResponse("/reports", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


