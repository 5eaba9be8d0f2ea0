"""`shipyard report --format html`: one self-contained file, charts as inline SVG.

Nothing is fetched at view time: no script, no font, no image, no stylesheet from anywhere; a
Content-Security-Policy `default-src 'none'` (inline styles allowed) makes the browser refuse
any request the page might try. Charts: a timeline of each release's stages, canary latency
against the CPU baseline, cache hit rate, and the outcome of each release; the DORA figures as
a table. The same figures as `--format json`.
"""

from __future__ import annotations

import html
from typing import Any

__all__ = ["CHART_IDS", "render_html"]

CHART_IDS = ("chart-timeline", "chart-canary", "chart-cache", "chart-outcome")
STAGE_COLOURS = {
    "base-image-pin": "#8c8c8c",
    "build": "#4e79a7",
    "quota": "#f28e2b",
    "quota-preferences": "#ffbe7d",
    "deploy": "#59a14f",
    "canary": "#edc948",
    "cutover": "#76b7b2",
    "rollback": "#e15759",
    "publish": "#b07aa1",
    "cpu-fallback": "#9c755f",
}
OUTCOME_COLOURS = {
    "released": "#59a14f",
    "rolled_back": "#e15759",
    "failed": "#a50f15",
    "cpu_fallback": "#f28e2b",
}
WIDTH = 1100
LEFT = 170  # room for the tag labels

# One release of report_data()'s "releases": a row of the ledger's frame read back from JSON
# (columns vary: one `s_<stage>` per stage the release ran), so real JSON, not a fixed shape.
Row = dict[str, Any]


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _label(r: Row) -> str:
    return f"{r['service']} {r['git_tag']}" if r.get("service") else str(r["git_tag"])


def _stage_seconds(r: Row) -> list[tuple[str, float]]:
    return [(k[2:], float(v)) for k, v in r.items() if k.startswith("s_") and v]


def timeline(releases: list[Row]) -> str:
    row = 22
    height = 40 + row * max(1, len(releases))
    longest = max((sum(s for _, s in _stage_seconds(r)) for r in releases), default=0) or 1
    scale = (WIDTH - LEFT - 20) / longest
    parts = []
    for i, r in enumerate(releases):
        y = 30 + i * row
        parts.append(f'<text x="{LEFT - 6}" y="{y + 14}" text-anchor="end">{_e(_label(r))}</text>')
        x = float(LEFT)
        for name, seconds in _stage_seconds(r):
            w = max(1.0, seconds * scale)
            colour = STAGE_COLOURS.get(name, "#bab0ac")
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 6}" fill="{colour}">'
                f"<title>{_e(name)}: {seconds:.1f} s</title></rect>"
            )
            x += w
    legend, lx = [], 10
    for n, c in STAGE_COLOURS.items():
        legend.append(
            f'<rect x="{lx}" y="6" width="10" height="10" fill="{c}"/>'
            f'<text x="{lx + 14}" y="15">{_e(n)}</text>'
        )
        lx += 14 + 7 * len(n) + 14
    axis = f'<text x="{WIDTH - 20}" y="{height - 2}" text-anchor="end">{longest:.0f} s</text>'
    return _svg("chart-timeline", height, "".join(legend) + "".join(parts) + axis)


def _line_chart(
    chart_id: str, releases: list[Row], series: list[tuple[str, str, str]], y_max: float | None
) -> str:
    height = 260
    top, bottom = 30, height - 40
    values = [r.get(key) for r in releases for key, _, _ in series]
    peak = y_max or max((float(v) for v in values if v is not None), default=1.0) or 1.0
    n = max(1, len(releases) - 1)
    step = (WIDTH - LEFT - 20) / n

    def xy(i: int, v: float) -> str:
        return f"{LEFT + i * step:.1f},{bottom - (bottom - top) * float(v) / peak:.1f}"

    parts = [
        f'<line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - 20}" y2="{bottom}" stroke="#888"/>',
        f'<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{bottom}" stroke="#888"/>',
        f'<text x="{LEFT - 6}" y="{top + 4}" text-anchor="end">{peak:,.0f}</text>',
        f'<text x="{LEFT - 6}" y="{bottom}" text-anchor="end">0</text>',
    ]
    for j, (key, name, colour) in enumerate(series):
        points = [(i, r[key]) for i, r in enumerate(releases) if r.get(key) is not None]
        if len(points) > 1:
            path = " ".join(xy(i, v) for i, v in points)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="3"/>'
            )
        for i, v in points:
            cx, cy = xy(i, v).split(",")
            parts.append(
                f'<circle cx="{cx}" cy="{cy}" r="5" fill="{colour}">'
                f"<title>{_e(_label(releases[i]))}: {name} {float(v):g}</title></circle>"
            )
        parts.append(f'<rect x="{LEFT + j * 220}" y="6" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{LEFT + j * 220 + 16}" y="16">{_e(name)}</text>')
    every = max(1, len(releases) // 12)
    for i, r in enumerate(releases):
        if i % every == 0:
            parts.append(
                f'<text x="{LEFT + i * step:.1f}" y="{bottom + 16}" text-anchor="middle">'
                f"{_e(r['git_tag'])}</text>"
            )
    return _svg(chart_id, height, "".join(parts))


def cache_bars(releases: list[Row]) -> str:
    height = 220
    top, bottom = 30, height - 40
    built = [(i, r) for i, r in enumerate(releases) if r.get("cache_hit_rate") is not None]
    step = (WIDTH - LEFT - 20) / max(1, len(releases))
    parts = [
        f'<line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - 20}" y2="{bottom}" stroke="#888"/>',
        f'<text x="{LEFT - 6}" y="{top + 4}" text-anchor="end">100%</text>',
        f'<text x="{LEFT - 6}" y="{bottom}" text-anchor="end">0%</text>',
        '<text x="10" y="16">cache hit rate (CACHED / all build steps)</text>',
    ]
    for i, r in built:
        rate = float(r["cache_hit_rate"])
        h = max(2.0, (bottom - top) * rate)
        parts.append(
            f'<rect x="{LEFT + i * step + 2:.1f}" y="{bottom - h:.1f}" width="{max(2.0, step - 4):.1f}"'
            f' height="{h:.1f}" fill="#4e79a7"><title>{_e(_label(r))}: {rate:.0%}</title></rect>'
        )
    if not built:
        parts.append(f'<text x="{LEFT + 10}" y="{bottom - 10}">no builds in the window</text>')
    return _svg("chart-cache", height, "".join(parts))


def _rate_503(r: Row) -> str:
    rate = r.get("remote_503_rate")
    return "" if rate is None else f", 503 answered to {float(rate):.0%} of canary requests"


def outcomes(releases: list[Row]) -> str:
    per_row = 20
    size = 46
    rows = max(1, -(-len(releases) // per_row))
    height = 40 + rows * (size + 22)
    parts = []
    for i, r in enumerate(releases):
        x = 10 + (i % per_row) * (size + 8)
        y = 30 + (i // per_row) * (size + 22)
        colour = OUTCOME_COLOURS.get(r["outcome"], "#bab0ac")
        parts.append(
            f'<rect x="{x}" y="{y}" width="{size}" height="{size}" rx="6" fill="{colour}">'
            f"<title>{_e(_label(r))}: {_e(r['outcome'])}{_e(_rate_503(r))} "
            f"{_e(r.get('rollback_reason') or '')}</title></rect>"
            f'<text x="{x + size / 2}" y="{y + size + 14}" text-anchor="middle">'
            f"{_e(r['git_tag'])}</text>"
        )
    legend = "".join(
        f'<rect x="{10 + i * 130}" y="6" width="12" height="12" fill="{c}"/>'
        f'<text x="{26 + i * 130}" y="16">{_e(n)}</text>'
        for i, (n, c) in enumerate(OUTCOME_COLOURS.items())
    )
    return _svg("chart-outcome", height, legend + "".join(parts))


def _svg(chart_id: str, height: int, body: str) -> str:
    return (
        f'<svg id="{chart_id}" class="chart" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img">{body}</svg>'
    )


def _figures_table(services: dict[str, dict[str, Any]]) -> str:
    """One row per figure, one column per service (narrow enough for a laptop screen)."""
    if not services:
        return "<p>No releases in the window.</p>"
    keys = list(next(iter(services.values())).keys())
    head = "".join(f"<th>{_e(name)}</th>" for name in ["figure", *services])
    body = "".join(
        f"<tr><td>{_e(key)}</td>"
        + "".join(
            f"<td>{_e('' if figs.get(key) is None else figs[key])}</td>"
            for figs in services.values()
        )
        + "</tr>"
        for key in keys
    )
    return f"<table><tr>{head}</tr>{body}</table>"


CSS = """
body{font:14px system-ui,sans-serif;margin:16px;color:#222;background:#fff;max-width:1140px}
h1{font-size:20px}h2{font-size:16px;margin:22px 0 6px}
svg text{font-size:11px;fill:#333}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px}
.chart{display:block;border:1px solid #eee}
"""


def render_html(data: dict[str, Any]) -> str:
    releases = data["releases"]
    canary = _line_chart(
        "chart-canary",
        releases,
        [
            ("canary_p95_ms", "canary p95 (ms)", "#e15759"),
            ("baseline_ms", "CPU baseline (ms)", "#4e79a7"),
        ],
        None,
    )
    csp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>Shipyard releases</title><style>{CSS}</style></head><body>"
        f"<h1>Shipyard releases — last {data['window_days']:g} days</h1>"
        f"<p>{len(releases)} releases; generated {_e(data['generated_at'])}</p>"
        f"<h2>DORA figures per service</h2>{_figures_table(data['services'])}"
        f"<h2>Timeline of each release's stages (seconds)</h2>{timeline(releases)}"
        f"<h2>Canary latency against the CPU baseline</h2>{canary}"
        f"<h2>Cache hit rate</h2>{cache_bars(releases)}"
        f"<h2>Outcome per release</h2>{outcomes(releases)}"
        "</body></html>"
    )
