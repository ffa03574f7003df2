"""The /reports pages as HTML: the transparency report and its login form.

Pure rendering, no routes. The pages run no JavaScript and name no other host:
inline CSS and the inline SVG of `api.charts` only, so they work under `CSP`.
Every text from the report (labels and member names come from members) is escaped.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from api.charts import bar_chart, series_chart

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'"
)
TITLE = "hashdb transparency report"
SERIES = ("contributions", "matches", "disputes_opened")

_STYLE = """
*{box-sizing:border-box}
body{margin:0;background:#f5f7fa;color:#1f2933;font:14px/1.45 system-ui,-apple-system,
 'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif}
header{background:#1f2933;color:#f5f7fa;padding:10px 24px;display:flex;align-items:center;
 justify-content:space-between}
header .brand{font-weight:600;letter-spacing:.02em}
header .who{display:flex;align-items:center;gap:12px;color:#cbd2d9}
header .who strong{color:#fff}
header button{background:transparent;color:#f5f7fa;border:1px solid #7b8794;border-radius:4px;
 padding:4px 12px;font:inherit;cursor:pointer}
main{max-width:1160px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:22px;margin:4px 0 2px}
h2{font-size:15px;margin:0 0 12px}
main>h2{margin:24px 0 12px}
h3{font-size:13px;margin:0 0 8px;color:#52606d;text-transform:uppercase;letter-spacing:.04em}
.meta{color:#52606d;margin:0 0 16px}
.toolbar{display:flex;flex-wrap:wrap;align-items:flex-end;justify-content:space-between;
 gap:12px;margin-bottom:16px}
form.range{display:flex;gap:10px;align-items:flex-end}
label{display:flex;flex-direction:column;font-size:12px;color:#52606d;gap:3px}
input{font:inherit;padding:5px 8px;border:1px solid #cbd2d9;border-radius:4px;min-width:200px}
button.primary{font:inherit;padding:6px 14px;border-radius:4px;border:1px solid #2f5680;
 background:#3e6d9c;color:#fff;cursor:pointer}
.downloads a{margin-left:10px;color:#2f5680}
.card{background:#fff;border:1px solid #e4e7eb;border-radius:6px;padding:16px;margin-bottom:16px}
.kpis{display:grid;grid-template-columns:repeat(5,1fr);gap:12px;margin-bottom:16px}
.kpi{background:#fff;border:1px solid #e4e7eb;border-radius:6px;padding:12px 14px}
.kpi .value{font-size:26px;font-weight:600}
.kpi .label{color:#52606d;font-size:12px}
.grid2,.grid3{display:grid;grid-template-columns:1fr 1fr;gap:16px;margin-bottom:16px}
.grid3{grid-template-columns:repeat(3,1fr)}
.grid2 .card,.grid3 .card{margin:0}
svg.chart{display:block;max-width:100%;height:auto}
table{border-collapse:collapse;width:100%}
td,th{padding:4px 0;border-bottom:1px solid #f0f2f5;text-align:left;font-weight:normal}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.sub td:first-child{padding-left:14px;color:#52606d}
tr.group td{color:#52606d;font-size:12px;padding-top:10px}
details summary{cursor:pointer;font-weight:600}
details table{margin-top:10px}
.note{color:#52606d;font-size:13px}
.error,.notice{background:#fdecea;border:1px solid #f0b4ae;color:#8a1c12;padding:8px 12px;
 border-radius:4px}
.login{max-width:440px;margin:80px auto}
.login form{display:flex;flex-direction:column;gap:12px}
.login input{width:100%}
"""


def render_report(
    report: dict[str, Any],
    *,
    member: str,
    csv_url: str,
    json_url: str,
    period_from: str,
    period_to: str,
) -> str:
    """The report page for `Report.as_json()`. `period_from`/`period_to` fill the form
    as the user typed them; the heading shows the period the report really covers."""
    c, rv, m = report["contributions"], report["review"], report["matches"]
    d, fb, w = report["disputes"], report["feedback"], report["withdrawals"]
    period = report["period"]
    share = m["share_later_disputed_or_disabled"]
    points = [(p["start"], p) for p in report["series"]]
    kpis = [
        ("Contributions", c["total"]),
        ("Matches", m["total"]),
        ("Media matched", m["media_matched"]),
        ("Disputes opened", d["opened"]),
        ("Withdrawals", w["total"]),
    ]
    disputes = [
        ("opened", d["opened"]),
        ("resolved", d["resolved"]),
        ("reinstated", d["outcomes"]["reinstated"]),
        ("disabled", d["outcomes"]["disabled"]),
    ]
    bucket = escape(period["bucket"])
    # Set by the route when the period asked for could not be used.
    notice = (f'<p class="notice" role="alert">{escape(report["notice"])}</p>'
              if report.get("notice") else "")
    charts = {
        "series": series_chart(
            points,
            SERIES,
            chart_id="chart-series",
            title=f"Contributions, matches and disputes opened per {period['bucket']}",
        ),
        "contributions": bar_chart(
            list(c["by_label"].items()),
            chart_id="chart-contributions-by-label",
            title="Contributions by label",
        ),
        "matches": bar_chart(
            list(m["by_label"].items()), chart_id="chart-matches-by-label", title="Matches by label"
        ),
        "disputes": bar_chart(
            disputes,
            chart_id="chart-disputes",
            color="#7a5c4f",
            title="Disputes opened, resolved, reinstated and disabled",
        ),
        "members": bar_chart(
            list(m["by_member"].items()),
            chart_id="chart-matches-by-member",
            title="Matches by member",
            color="#52606d",
        ),
    }
    tables = [
        _table(
            "Contributions",
            [
                ("Total", c["total"]),
                ("Entered review", c["entered_review"]),
                ("From trusted flaggers", c["by_source"]["trusted_flagger"]),
                ("From members", c["by_source"]["member"]),
            ],
            {"By label": c["by_label"]},
        ),
        _table(
            "Review",
            [
                ("Pending at end", rv["pending_at_end"]),
                ("Approved", rv["approved"]),
                ("Rejected", rv["rejected"]),
                ("Median time to review", format_duration(rv["median_seconds_to_review"])),
            ],
        ),
        _table(
            "Matches",
            [
                ("Total", m["total"]),
                ("Media matched", m["media_matched"]),
                ("Media later disputed or disabled", m["media_later_disputed_or_disabled"]),
                ("Share later disputed or disabled", format_share(share)),
                ("Candidates (for review)", report["candidates"]["total"]),
            ],
            {"By label": m["by_label"], "By member": m["by_member"]},
        ),
        _table(
            "Disputes",
            [
                ("Opened", d["opened"]),
                ("Resolved", d["resolved"]),
                ("Reinstated", d["outcomes"]["reinstated"]),
                ("Disabled", d["outcomes"]["disabled"]),
                ("Median time to resolution", format_duration(d["median_seconds_to_resolution"])),
                ("Open at end", d["open_at_end"]),
            ],
        ),
        _table("Feedback", [("Agree", fb["agree"]), ("Disagree", fb["disagree"])]),
        _table("Withdrawals", [("Total", w["total"])], {"By label": w["by_label"]}),
    ]
    body = f"""
<header><div class="brand">hashdb</div><div class="who">Signed in as
<strong>{escape(member)}</strong><form method="post" action="/reports/logout">
<button type="submit" id="logout">Log out</button></form></div></header>
<main>
<h1>{TITLE}</h1>
<p class="meta">{escape(_when(period["from"]))} to {escape(_when(period["to"]))} UTC
&middot; per {bucket} &middot; scope: {escape(report["scope"])}</p>
{notice}<div class="toolbar">
<form class="range" method="get" action="/reports">
<label for="from">From (UTC)<input id="from" name="from" value="{escape(period_from)}"></label>
<label for="to">To (UTC, exclusive)<input id="to" name="to" value="{escape(period_to)}"></label>
<button type="submit" class="primary">Show</button></form>
<div class="downloads">Download this report:<a href="{escape(json_url)}">JSON</a>
<a href="{escape(csv_url)}">CSV</a></div></div>
<section class="kpis">{"".join(_kpi(label, v) for label, v in kpis)}</section>
<section class="card"><h2>Activity over time</h2>
{charts["series"]}</section>
<div class="grid2">
<section class="card"><h2>Contributions by label</h2>
{charts["contributions"]}</section>
<section class="card"><h2>Matches by label</h2>
{charts["matches"]}</section>
<section class="card"><h2>Disputes</h2>
{charts["disputes"]}</section>
<section class="card"><h2>Matches by member</h2>
{charts["members"]}</section>
</div>
<h2>All figures</h2>
<div class="grid3">
{"".join(tables)}
</div>
{_series_table(report["series"])}
</main>"""
    return _page(TITLE, body)


def render_login(message: str | None = None) -> str:
    """The sign-in form: any hashdb API key, kept in an HttpOnly cookie."""
    alert = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    body = f"""
<main class="login"><section class="card">
<h1>{TITLE}</h1>
<p>Sign in with a hashdb API key. Any member's key works: the report shows what that
key may see.</p>
{alert}
<form method="post" action="/reports/login">
<label for="key">API key<input type="password" name="key" id="key" required
 autocomplete="current-password" spellcheck="false"></label>
<button type="submit" id="login" class="primary">Sign in</button>
</form>
<p class="note">The key is kept in an HttpOnly cookie for this site only (scripts cannot
read it) until you log out.</p>
</section></main>"""
    return _page(f"Sign in: {TITLE}", body)


def format_duration(seconds: float | None) -> str:
    """A duration in its two largest units ("2 h 5 min", "3 d 4 h", "42 s"); "n/a" for None."""
    if seconds is None:
        return "n/a"
    if 0 < seconds < 1:
        return "< 1 s"
    left = round(seconds)
    amounts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        amounts.append((left // size, unit))
        left %= size
    first = next((i for i, (n, _) in enumerate(amounts) if n), len(amounts) - 1)
    shown = [amounts[first], *(a for a in amounts[first + 1 : first + 2] if a[0])]
    return " ".join(f"{n} {unit}" for n, unit in shown)


def format_share(share: float | None) -> str:
    """A fraction as a percentage with one decimal; "n/a" when there was nothing to divide."""
    return "n/a" if share is None else f"{share * 100:.1f}%"


def _page(title: str, body: str) -> str:
    # The empty data: icon stops the browser asking the server for /favicon.ico.
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer"><link rel="icon" href="data:,">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def _kpi(label: str, value: int) -> str:
    return (
        f'<div class="kpi"><div class="value">{value:,}</div>'
        f'<div class="label">{escape(label)}</div></div>'
    )


def _cell(value: int | str) -> str:
    return f"{value:,}" if isinstance(value, int) else escape(value)


def _table(
    title: str, rows: list[tuple[str, int | str]], groups: dict[str, dict[str, int]] | None = None
) -> str:
    out = [f'<section class="card"><h3>{escape(title)}</h3><table>']
    out += [f'<tr><td>{escape(k)}</td><td class="n">{_cell(v)}</td></tr>' for k, v in rows]
    for name, counts in (groups or {}).items():
        out.append(f'<tr class="group"><td colspan="2">{escape(name)}</td></tr>')
        if not counts:
            out.append('<tr class="sub"><td>none</td><td class="n"></td></tr>')
        out += [
            f'<tr class="sub"><td>{escape(k)}</td><td class="n">{v:,}</td></tr>'
            for k, v in counts.items()
        ]
    out.append("</table></section>")
    return "".join(out)


def _series_table(series: list[dict[str, Any]]) -> str:
    """Every bucket's figures, folded away (a <details> opens without JavaScript)."""
    columns = (*SERIES, "withdrawals")
    head = "".join(f'<th class="n">{escape(s.replace("_", " "))}</th>' for s in columns)
    rows = "".join(
        f"<tr><td>{escape(_when(p['start']))}</td>"
        + "".join(f'<td class="n">{p[s]:,}</td>' for s in columns)
        + "</tr>"
        for p in series
    )
    return (
        f'<details class="card"><summary>Per-bucket figures ({len(series)} buckets)</summary>'
        f"<table><tr><th>Bucket start (UTC)</th>{head}</tr>{rows}</table></details>"
    )


def _when(iso: str) -> str:
    """An ISO instant for people: "5 Dec 2026, 21:30" (UTC); as given if it does not parse."""
    try:
        at = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return f"{at.day} {at:%b %Y, %H:%M}"
