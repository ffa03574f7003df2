"""Charts as inline SVG, drawn on the server with the standard library.

The report page runs no JavaScript and loads nothing from elsewhere, so its charts
are plain SVG markup. What a caller (or a test, or a screen reader) may rely on:
each chart is one `<svg id=...>` with `role="img"`, an `aria-label` and a `<title>`;
every bar or point carries `data-key` and `data-value` (an int); a bar shows its
value as `<text>`. Empty charts say "no data". The markup is well-formed XML and
has no `xmlns` (inline SVG in HTML needs none, and the page names no other host).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
INK = "#1f2933"
MUTED = "#52606d"
GRID = "#e4e7eb"
AXIS = "#9aa5b1"
BAR = "#3e6d9c"
# Muted and told apart by dash pattern too, for readers who cannot tell the colours apart.
SERIES_STYLE = [("#3e6d9c", ""), ("#c07a2c", "6 3"), ("#a23b3b", "2 3"), ("#4d7d5a", "8 3 2 3")]

_CHAR_W = 7.2  # a generous advance of a 12px sans-serif glyph, to size label columns
_ROW = 26
_LABEL_CHARS = 28  # longer labels are cut with an ellipsis; the bar's tooltip has them whole


def nice_ticks(top: int, target: int = 5) -> list[int]:
    """Integer ticks from 0 covering `top` in steps of 1, 2 or 5 x 10^k (0..1 when top <= 0)."""
    if top <= 0:
        return [0, 1]
    raw = top / target
    step = 1
    if raw > 1:
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    end = math.ceil(top / step) * step
    return list(range(0, end + 1, step))


def bar_chart(
    items: Sequence[tuple[str, int]],
    *,
    chart_id: str,
    title: str,
    width: int = 560,
    color: str = BAR,
) -> str:
    """Horizontal bars, one per (label, value), in the given order."""
    if not items:
        return _empty(chart_id, title, width)
    fit = min(max(len(label) for label, _ in items), _LABEL_CHARS)
    label_w = max(round(fit * _CHAR_W) + 14, 64)
    top_value = max(v for _, v in items)
    # room on the right for the value shown past the end of the longest bar
    x0, x1 = label_w, width - round(len(f"{top_value:,}") * _CHAR_W) - 14
    top, axis_h = 6, 26
    height = top + len(items) * _ROW + axis_h
    ticks = nice_ticks(top_value)
    scale = (x1 - x0) / ticks[-1]
    out = [_open(chart_id, title, width, height)]
    out += _x_grid(ticks, x0, scale, top, top + len(items) * _ROW)
    for i, (label, value) in enumerate(items):
        y = top + i * _ROW
        mid = y + _ROW / 2
        shown = label if len(label) <= fit else label[: fit - 1] + "\u2026"
        out.append(
            f'<text x="{x0 - 8}" y="{mid:.1f}" text-anchor="end" dominant-baseline="central"'
            f' fill="{INK}" font-size="12">{escape(shown)}</text>'
        )
        w = value * scale
        out.append(
            f'<rect class="bar" x="{x0}" y="{y + 5}" width="{w:.1f}" height="{_ROW - 10}"'
            f' rx="2" fill="{color}" data-key="{escape(label)}" data-value="{int(value)}">'
            f"<title>{escape(label)}: {value:,}</title></rect>"
        )
        out.append(
            f'<text x="{x0 + w + 6:.1f}" y="{mid:.1f}" dominant-baseline="central"'
            f' fill="{INK}" font-size="12">{value:,}</text>'
        )
    out.append(
        f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{top + len(items) * _ROW}" stroke="{AXIS}"/>'
    )
    out.append("</svg>")
    return "".join(out)


def series_chart(
    points: Sequence[tuple[str, Mapping[str, int]]],
    series: Sequence[str],
    *,
    chart_id: str,
    title: str,
    width: int = 1120,
    height: int = 320,
) -> str:
    """One line per series over time buckets. `points` are (bucket start ISO, {series: value});
    each point's data-key is "<series>/<bucket start>". The legend gives each series' total."""
    if not points:
        return _empty(chart_id, title, width)
    n = len(points)
    ticks = nice_ticks(max((int(p.get(s, 0)) for _, p in points for s in series), default=0))
    x0, x1 = round(len(f"{ticks[-1]:,}") * _CHAR_W) + 16, width - 16
    y0, y1 = 44, height - 36  # plot top (below the legend) and bottom (above the time axis)
    step_x = (x1 - x0) / n

    def at(i: int, v: int) -> tuple[float, float]:
        return x0 + (i + 0.5) * step_x, y1 - v * (y1 - y0) / ticks[-1]

    out = [_open(chart_id, title, width, height)]
    for t in ticks:
        y = y1 - t * (y1 - y0) / ticks[-1]
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="{GRID}"/>')
        out.append(
            f'<text x="{x0 - 8}" y="{y:.1f}" text-anchor="end" dominant-baseline="central"'
            f' fill="{MUTED}" font-size="12">{t:,}</text>'
        )
    out.append(f'<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="{AXIS}"/>')
    dates_only = all(start[11:16] in ("", "00:00") for start, _ in points)
    every = math.ceil(n / 7)
    for i in range(0, n, every):
        x, _ = at(i, 0)
        out.append(f'<line x1="{x:.1f}" y1="{y1}" x2="{x:.1f}" y2="{y1 + 4}" stroke="{AXIS}"/>')
        out.append(
            f'<text x="{x:.1f}" y="{y1 + 18}" text-anchor="middle" fill="{MUTED}"'
            f' font-size="12">{escape(_short_time(points[i][0], dates_only))}</text>'
        )
    r = 3 if n <= 60 else 1.8
    legend_x = x0
    for k, name in enumerate(series):
        colour, dash = SERIES_STYLE[k % len(SERIES_STYLE)]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        total = sum(int(p.get(name, 0)) for _, p in points)
        label = f"{name.replace('_', ' ')} ({total:,})"
        out.append(
            f'<line x1="{legend_x}" y1="16" x2="{legend_x + 24}" y2="16" stroke="{colour}"'
            f' stroke-width="2.5"{dash_attr}/>'
            f'<text class="legend" x="{legend_x + 30}" y="16" dominant-baseline="central"'
            f' fill="{INK}" font-size="12">{escape(label)}</text>'
        )
        legend_x += 30 + int(len(label) * _CHAR_W) + 20
        coords = [at(i, int(p.get(name, 0))) for i, (_, p) in enumerate(points)]
        out.append(
            '<polyline fill="none" stroke-width="2" stroke-linejoin="round"'
            f' stroke="{colour}"{dash_attr} points="'
            + " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            + '"/>'
        )
        for (start, p), (x, y) in zip(points, coords, strict=True):
            value = int(p.get(name, 0))
            key = f"{name}/{start}"
            out.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{colour}"'
                f' data-key="{escape(key)}" data-value="{value}">'
                f"<title>{escape(name.replace('_', ' '))}, {escape(start)}: {value:,}</title>"
                "</circle>"
            )
    out.append("</svg>")
    return "".join(out)


def _open(chart_id: str, title: str, width: int, height: int) -> str:
    return (
        f'<svg id="{escape(chart_id)}" class="chart" role="img" aria-label="{escape(title)}"'
        f' width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        f' font-family="{escape(FONT)}"><title>{escape(title)}</title>'
    )


def _empty(chart_id: str, title: str, width: int) -> str:
    return (
        _open(chart_id, title, width, 56)
        + f'<rect x="0.5" y="0.5" width="{width - 1}" height="55" rx="4" fill="#f5f7fa"'
        f' stroke="{GRID}"/><text x="{width / 2}" y="28" text-anchor="middle"'
        f' dominant-baseline="central" fill="{MUTED}" font-size="13">no data</text></svg>'
    )


def _x_grid(ticks: list[int], x0: int, scale: float, y_top: int, y_bottom: int) -> list[str]:
    out = []
    for t in ticks:
        x = x0 + t * scale
        out.append(
            f'<line x1="{x:.1f}" y1="{y_top}" x2="{x:.1f}" y2="{y_bottom}" stroke="{GRID}"/>'
            f'<text x="{x:.1f}" y="{y_bottom + 17}" text-anchor="middle" fill="{MUTED}"'
            f' font-size="11">{t:,}</text>'
        )
    return out


def _short_time(iso: str, date_only: bool) -> str:
    """A bucket start as an axis label: the date, or month-day and time (UTC)."""
    try:
        at = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return at.strftime("%Y-%m-%d") if date_only else at.strftime("%m-%d %H:%M")
