"""`shipyard report --format html`: one self-contained file, charts as inline SVG.

Nothing is fetched at view time: no script, no font, no image, no stylesheet from anywhere; a
Content-Security-Policy `default-src 'none'` (inline styles allowed) makes the browser refuse
any request the page might try. Charts: a timeline of each release's stages, canary latency
against the CPU baseline, cache hit rate, and the outcome of each release (hand rollbacks and
cancels marked); the DORA figures and every release as tables. The same figures as
`--format json`, written for a person: durations in s / min / h / days, rates in %, latencies in
ms.

Labels fit their chart without a script to measure them: a label's width is estimated from its
characters at the charts' 11 px font (`text_width`, on the wide side), the timeline's label
column is as wide as its longest label (up to `MAX_LABEL`), and a label still too long is cut
with "…" and keeps its full text as a tooltip (`<title>`). tests/observe/test_report.py checks
in Chromium that no label leaves its chart.
"""

from __future__ import annotations

import html
from typing import Any

from shipyard.deployments.report.figures import (
    OUTCOME_LABELS,
    figure_lines,
    human_duration,
    outcome_label,
)

__all__ = ["CHART_IDS", "render_html", "text_width"]

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
    "rolled_back_by_hand": "#b07aa1",
    "cancelled": "#bab0ac",
    "failed_infrastructure": "#4e79a7",
}
# A mark drawn on the outcome's square: a person's choice or an unreachable cloud at a glance.
OUTCOME_MARKS = {
    "rolled_back_by_hand": "↩",
    "cancelled": "✕",
    "failed_infrastructure": "⚡",
    "rolled_back": "↓",
    "failed": "!",
}
WIDTH = 1100
FONT_PX = 11  # `svg text` in CSS below
MAX_LABEL = 300  # the widest label column of the timeline, px

# One release of report_data()'s "releases": a row of the ledger's frame read back from JSON
# (columns vary: one `s_<stage>` per stage the release ran), so real JSON, not a fixed shape.
Row = dict[str, Any]

_NARROW = set("iljtf.,:;'|!()[] ")
_WIDE = set("mwMW@%—…")


def text_width(text: str, px: float = FONT_PX) -> float:
    """An upper estimate of `text`'s width at `px` in a sans-serif font (no font is loaded: the
    reader's own system-ui renders it), in px."""
    em = 0.0
    for ch in text:
        if ch in _NARROW:
            em += 0.34
        elif ch in _WIDE or not ch.isascii():
            em += 0.95
        elif ch.isupper():
            em += 0.72
        else:
            em += 0.6
    return em * px


def fit(text: str, width: float) -> str:
    """`text`, cut with "…" so that it fits `width` px."""
    if text_width(text) <= width:
        return text
    while text and text_width(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _text(x: float, y: float, text: str, width: float, anchor: str = "start", cls: str = "") -> str:
    """A label cut to `width` px; when cut, its whole text is its tooltip."""
    shown = fit(text, width)
    title = f"<title>{_e(text)}</title>" if shown != text else ""
    klass = f' class="{cls}"' if cls else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{klass}>{title}{_e(shown)}</text>'


def _label(r: Row) -> str:
    return f"{r['service']} {r['git_tag']}" if r.get("service") else str(r["git_tag"])


def _service_cut(r: Row, width: float) -> str:
    """ "service tag" in `width` px: the service is cut before the tag is."""
    tag = str(r["git_tag"])
    room = width - text_width(" " + tag)
    if room < text_width("a…"):
        return tag
    return f"{fit(str(r['service']), room)} {tag}"


def _stage_seconds(r: Row) -> list[tuple[str, float]]:
    return [(k[2:], float(v)) for k, v in r.items() if k.startswith("s_") and v]


def _legend(items: list[tuple[str, str]], y: float, x0: float = 10) -> tuple[list[str], float]:
    """Colour swatches with their names, wrapped onto a new line before the chart's edge;
    the parts and the y below the legend."""
    parts, x = [], x0
    for name, colour in items:
        w = 14 + text_width(name) + 14
        if x + w > WIDTH - 10 and x > x0:
            x, y = x0, y + 16
        parts.append(
            f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="10" height="10" fill="{colour}"/>'
            + _text(x + 14, y, name, WIDTH - 10 - x - 14)
        )
        x += w
    return parts, y + 12


def timeline(releases: list[Row]) -> str:
    row = 22
    legend, top = _legend(list(STAGE_COLOURS.items()), 16)
    # One service: its tags say it all; several: "service tag", the service cut first.
    one = len({r.get("service") for r in releases}) <= 1
    full = [str(r["git_tag"]) if one else _label(r) for r in releases]
    left = 12 + min(MAX_LABEL, max((text_width(t) for t in full), default=60.0))
    labels = [t if one else _service_cut(r, left - 12) for t, r in zip(full, releases, strict=True)]
    height = int(top + 26 + row * max(1, len(releases)))
    longest = max((sum(s for _, s in _stage_seconds(r)) for r in releases), default=0) or 1
    scale = (WIDTH - left - 20) / longest
    parts = []
    for i, r in enumerate(releases):
        y = top + 6 + i * row
        shown = labels[i]
        title = f"<title>{_e(full[i])}</title>" if shown != full[i] else ""
        parts.append(
            f'<text x="{left - 6:.1f}" y="{y + 14}" text-anchor="end" class="label">'
            f"{title}{_e(fit(shown, left - 12))}</text>"
        )
        x = float(left)
        for name, seconds in _stage_seconds(r):
            w = max(1.0, seconds * scale)
            colour = STAGE_COLOURS.get(name, "#bab0ac")
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 6}" fill="{colour}">'
                f"<title>{_e(name)}: {_e(human_duration(seconds))}</title></rect>"
            )
            x += w
    axis = _text(WIDTH - 10, height - 4, f"longest release: {human_duration(longest)}", 400, "end")
    return _svg("chart-timeline", height, "".join(legend) + "".join(parts) + axis)


def _line_chart(
    chart_id: str,
    releases: list[Row],
    series: list[tuple[str, str, str]],
    unit: str,
) -> str:
    height = 260
    top, bottom = 30, height - 40
    values = [r.get(key) for r in releases for key, _, _ in series]
    peak = max((float(v) for v in values if v is not None), default=1.0) or 1.0
    top_label = f"{peak:,.0f} {unit}"
    left = 16 + text_width(top_label)  # the y axis's labels end 6 px left of the axis
    n = max(1, len(releases) - 1)
    step = (WIDTH - left - 40) / n

    def xy(i: int, v: float) -> tuple[float, float]:
        return left + i * step, bottom - (bottom - top) * float(v) / peak

    parts = [
        f'<line x1="{left:.1f}" y1="{bottom}" x2="{WIDTH - 20}" y2="{bottom}" stroke="#888"/>',
        f'<line x1="{left:.1f}" y1="{top}" x2="{left:.1f}" y2="{bottom}" stroke="#888"/>',
        _text(left - 6, top + 4, top_label, left - 10, "end", "axis"),
        _text(left - 6, bottom, f"0 {unit}", left - 10, "end", "axis"),
    ]
    for j, (key, name, colour) in enumerate(series):
        points = [(i, r[key]) for i, r in enumerate(releases) if r.get(key) is not None]
        if len(points) > 1:
            path = " ".join("{:.1f},{:.1f}".format(*xy(i, v)) for i, v in points)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="3"/>'
            )
        for i, v in points:
            cx, cy = xy(i, v)
            parts.append(
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{colour}">'
                f"<title>{_e(_label(releases[i]))}: {name} {float(v):,.0f} {unit}</title></circle>"
            )
        parts.append(
            f'<rect x="{left + j * 260:.1f}" y="6" width="12" height="12" fill="{colour}"/>'
        )
        parts.append(_text(left + j * 260 + 16, 16, name, 240))
    every = max(1, len(releases) // 12)
    room = step * every - 6
    for i, r in enumerate(releases):
        if i % every == 0:
            x = left + i * step
            shown = fit(str(r["git_tag"]), min(room, 2 * x - 4, 2 * (WIDTH - x) - 4))
            parts.append(_text(x, bottom + 16, str(r["git_tag"]), text_width(shown) + 1, "middle"))
    return _svg(chart_id, height, "".join(parts))


def cache_bars(releases: list[Row]) -> str:
    height = 220
    top, bottom = 30, height - 40
    left = 50
    built = [(i, r) for i, r in enumerate(releases) if r.get("cache_hit_rate") is not None]
    step = (WIDTH - left - 20) / max(1, len(releases))
    parts = [
        f'<line x1="{left}" y1="{bottom}" x2="{WIDTH - 20}" y2="{bottom}" stroke="#888"/>',
        _text(left - 6, top + 4, "100 %", left - 10, "end", "axis"),
        _text(left - 6, bottom, "0 %", left - 10, "end", "axis"),
        _text(10, 16, "cache hit rate (CACHED / all build steps)", 600),
    ]
    for i, r in built:
        rate = float(r["cache_hit_rate"])
        h = max(2.0, (bottom - top) * rate)
        parts.append(
            f'<rect x="{left + i * step + 2:.1f}" y="{bottom - h:.1f}" width="{max(2.0, step - 4):.1f}"'
            f' height="{h:.1f}" fill="#4e79a7"><title>{_e(_label(r))}: {rate:.0%}</title></rect>'
        )
    if not built:
        parts.append(_text(left + 10, bottom - 10, "no builds in the window", 400))
    return _svg("chart-cache", height, "".join(parts))


def _rate_503(r: Row) -> str:
    rate = r.get("remote_503_rate")
    return "" if rate is None else f", 503 answered to {float(rate):.0%} of canary requests"


def _tooltip(r: Row) -> str:
    parts = [f"{_label(r)}: {outcome_label(r['outcome'], r.get('by'))}{_rate_503(r)}"]
    if r.get("steps"):
        parts.append(f"rollout steps {r['steps']}")
    if r.get("rollback_reason"):
        parts.append(str(r["rollback_reason"]))
    return "; ".join(parts)


def outcomes(releases: list[Row]) -> str:
    per_row = 20
    size = 46
    legend, top = _legend(
        [
            (f"{OUTCOME_MARKS.get(o, '')} {label}".strip(), OUTCOME_COLOURS[o])
            for o, label in OUTCOME_LABELS.items()
        ],
        16,
    )
    rows = max(1, -(-len(releases) // per_row))
    height = int(top + 10 + rows * (size + 22))
    parts = []
    for i, r in enumerate(releases):
        x = 10 + (i % per_row) * (size + 8)
        y = top + 6 + (i // per_row) * (size + 22)
        colour = OUTCOME_COLOURS.get(r["outcome"], "#bab0ac")
        mark = OUTCOME_MARKS.get(r["outcome"], "")
        parts.append(
            f'<rect x="{x}" y="{y}" width="{size}" height="{size}" rx="6" fill="{colour}">'
            f"<title>{_e(_tooltip(r))}</title></rect>"
        )
        if mark:
            parts.append(
                f'<text x="{x + size / 2}" y="{y + size / 2 + 7}" text-anchor="middle" '
                f'class="mark">{mark}</text>'
            )
        parts.append(_text(x + size / 2, y + size + 14, str(r["git_tag"]), size + 6, "middle"))
    return _svg("chart-outcome", height, "".join(legend) + "".join(parts))


def _svg(chart_id: str, height: int, body: str) -> str:
    return (
        f'<svg id="{chart_id}" class="chart" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img">{body}</svg>'
    )


def _figures_table(services: dict[str, dict[str, Any]]) -> str:
    """One row per figure, one column per service (narrow enough for a laptop screen)."""
    if not services:
        return "<p>No releases in the window.</p>"
    head = "".join(f"<th>{_e(name)}</th>" for name in ["figure", *services])
    lines = {name: figure_lines(figs) for name, figs in services.items()}
    first = next(iter(lines.values()))
    body = "".join(
        f'<tr><td title="{_e(key)}">{_e(label)}</td>'
        + "".join(f'<td class="fig">{_e(per[i][2])}</td>' for per in lines.values())
        + "</tr>"
        for i, (key, label, _) in enumerate(first)
    )
    return f'<table id="figures"><tr>{head}</tr>{body}</table>'


def _percent(value: Any) -> str:
    return "—" if value is None else f"{100 * float(value):.0f} %"


def _ms(value: Any) -> str:
    return "—" if value is None else f"{float(value):,.0f} ms"


def _releases_table(releases: list[Row]) -> str:
    """Every release, newest first: what happened, who chose it, how long, from when."""
    if not releases:
        return ""
    head = (
        "<tr><th>service</th><th>tag</th><th>outcome</th><th>started (UTC)</th><th>took</th>"
        "<th>lead time</th><th>lead time from</th><th>rollout steps</th><th>canary p95</th>"
        "<th>cache hits</th><th>reason</th></tr>"
    )
    rows = []
    for r in reversed(releases):
        outcome = r["outcome"]
        mark = OUTCOME_MARKS.get(outcome, "")
        lead = r.get("lead_time_s")
        rows.append(
            f'<tr class="outcome-{_e(outcome)}"><td>{_e(r["service"])}</td>'
            f"<td>{_e(r['git_tag'])}</td>"
            f"<td>{_e((mark + ' ') if mark else '')}{_e(outcome_label(outcome, r.get('by')))}"
            f"{' (re-run: no change)' if r.get('noop') else ''}</td>"
            f"<td>{_e(str(r['started_at'])[:16].replace('T', ' '))}</td>"
            f'<td class="fig">{_e(human_duration(r.get("seconds")))}</td>'
            f'<td class="fig">{_e(human_duration(lead))}</td>'
            f"<td>{_e(r.get('lead_time_source') if lead is not None else '')}</td>"
            f"<td>{_e(r.get('steps') or '')}</td>"
            f'<td class="fig">{_e(_ms(r.get("canary_p95_ms")))}</td>'
            f'<td class="fig">{_e(_percent(r.get("cache_hit_rate")))}</td>'
            f"<td>{_e((r.get('rollback_reason') or '')[:200])}</td></tr>"
        )
    return f'<table id="releases">{head}{"".join(rows)}</table>'


def _chains_table(chains: list[Row]) -> str:
    """Each tag promoted through the environments, with when it passed each and its digest."""
    if not chains:
        return "<p>No promotions in the window.</p>"
    head = "<tr><th>service</th><th>tag</th><th>stages (UTC)</th><th>digest</th></tr>"
    rows = [
        f"<tr><td>{_e(c['service'])}</td><td>{_e(c['git_tag'])}</td><td>{_e(c['chain'])}</td>"
        f"<td>{_e(c['digest'])}{'' if c['same_digest'] else ' (differs!)'}</td></tr>"
        for c in chains
    ]
    return f'<table id="chains">{head}{"".join(rows)}</table>'


CSS = """
body{font:14px system-ui,sans-serif;margin:16px;color:#222;background:#fff;max-width:1140px}
h1{font-size:20px}h2{font-size:16px;margin:22px 0 6px}
svg text{font-size:11px;fill:#333}svg text.mark{font-size:20px;fill:#fff}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px}
td.fig{text-align:right;white-space:nowrap}
.legend{font-size:12px;color:#555;max-width:1100px}
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
        "ms",
    )
    csp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    legend = data.get("lead_time_legend", "")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>Shipyard releases</title><style>{CSS}</style></head><body>"
        f"<h1>Shipyard releases — last {data['window_days']:g} days</h1>"
        f"<p>{len(releases)} releases; generated {_e(str(data['generated_at'])[:19])} UTC</p>"
        f"<h2>DORA figures per service</h2>{_figures_table(data['services'])}"
        f'<p class="legend">{_e(legend)} Hand rollbacks, cancels and releases that could not '
        "reach Google or the sandbox are shown but are not changes: they count neither as "
        "deployments nor as change failures.</p>"
        f"<h2>Timeline of each release's stages</h2>{timeline(releases)}"
        f"<h2>Canary latency against the CPU baseline</h2>{canary}"
        f"<h2>Cache hit rate</h2>{cache_bars(releases)}"
        f"<h2>Outcome per release</h2>{outcomes(releases)}"
        f"<h2>Promotions through the environments</h2>{_chains_table(data.get('chains') or [])}"
        f"<h2>Releases, newest first</h2>{_releases_table(releases)}"
        "</body></html>"
    )
