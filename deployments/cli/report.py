"""`shipyard report`: the release ledger as a table, JSON or one self-contained html file."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import typer

_SINCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhw])\s*$")
_UNIT_DAYS = {"h": 1 / 24, "d": 1.0, "w": 7.0}


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def parse_since(text: str) -> float:
    """'30d', '12h', '2w' -> days."""
    match = _SINCE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise typer.BadParameter(
            f"--since {text!r} is not a window; use a number and a unit: 30d, 12h or 2w"
        )
    return float(match.group(1)) * _UNIT_DAYS[match.group(2)]


def report(
    service: str = typer.Option(None, "--service", help="Only this service (default: all)."),
    since: str = typer.Option("30d", "--since", help="Window: 30d, 12h, 2w."),
    fmt: str = typer.Option("table", "--format", help="table, json or html."),
    output: Path = typer.Option(None, "--output", help="Write to this file (default: stdout)."),
) -> None:
    """Releases of the window (tag, outcome, seconds per stage, canary, cache hit rate) and
    the DORA figures per service, read from the release ledger on the Prefect server."""
    from shipyard.deployments.report.figures import report_data
    from shipyard.flows.observe.ledger import read_ledger

    if fmt not in ("table", "json", "html"):
        raise typer.BadParameter(f"--format {fmt!r}: use table, json or html")
    days = parse_since(since)
    now = dt.datetime.now(dt.UTC)
    entries = read_ledger(service, since=now - dt.timedelta(days=days))
    data = report_data(entries, days, now)
    if fmt == "json":
        text = json.dumps(data, indent=2)
    elif fmt == "html":
        from shipyard.deployments.report.html import render_html

        text = render_html(data)
    else:
        text = render_table(data)
    if output:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output} ({len(entries)} releases)", err=True)
    else:
        typer.echo(text)


def render_table(data: dict[str, Any]) -> str:
    """The figures and the releases as a person reads them: every duration in s / min / h /
    days, rates in %, latencies in ms (`--format json` keeps the raw numbers)."""
    import pandas as pd

    from shipyard.deployments.report.figures import (
        chain_lines,
        figure_lines,
        human_duration,
        outcome_label,
    )

    lines = [f"DORA figures, last {data['window_days']:g} days"]
    services = data["services"]
    if services:
        per = {name: figure_lines(figs) for name, figs in services.items()}
        labels = [label for _, label, _ in next(iter(per.values()))]
        table = pd.DataFrame({name: [v for _, _, v in rows] for name, rows in per.items()})
        table.index = pd.Index(labels)
        lines.append(table.to_string())
        lines.append(data.get("lead_time_legend", ""))
    else:
        lines.append("(no releases)")
    releases = data["releases"]
    if releases:
        rows = [
            {
                "service": r["service"],
                "tag": r["git_tag"],
                "outcome": outcome_label(r["outcome"], r.get("by"))
                + (" (re-run)" if r.get("noop") else ""),
                "region": r.get("region") or "-",
                "took": human_duration(r.get("seconds")),
                "lead time": "-"
                if r.get("lead_time_s") is None
                else f"{human_duration(r['lead_time_s'])} from {r.get('lead_time_source')}",
                "steps": r.get("steps") or "-",
                "retries": r.get("retries") or 0,
                "cache hits": "-"
                if r.get("cache_hit_rate") is None
                else f"{100 * float(r['cache_hit_rate']):.0f} %",
                "canary p95": "-"
                if r.get("canary_p95_ms") is None
                else f"{float(r['canary_p95_ms']):,.0f} ms",
            }
            for r in releases
        ]
        lines += ["", "Releases", pd.DataFrame(rows).to_string(index=False)]
    lines += chain_lines(data)  # the promotions, when there are any
    return "\n".join(lines)
