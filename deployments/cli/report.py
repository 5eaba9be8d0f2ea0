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
    import pandas as pd

    lines = []
    figures = pd.DataFrame.from_dict(data["services"], orient="index")
    lines.append(f"DORA figures, last {data['window_days']:g} days")
    lines.append(figures.to_string() if not figures.empty else "(no releases)")
    releases = pd.DataFrame(data["releases"])
    if not releases.empty:
        cols = [
            "service",
            "git_tag",
            "outcome",
            "region",
            "seconds",
            "retries",
            "cache_hit_rate",
            "canary_p95_ms",
            "speedup",
            "remote_503_rate",
        ]
        lines += ["", "Releases", releases[cols].to_string(index=False)]
    return "\n".join(lines)
