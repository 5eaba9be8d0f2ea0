"""`shipyard report` over a known ledger: DORA figures by hand, the html in headless Chromium."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import pytest
from chromium_page import Page, chromium_binary
from typer.testing import CliRunner

from shipyard.deployments.cli.main import app
from shipyard.deployments.report.html import CHART_IDS
from shipyard.flows.observe.ledger import LedgerEntry, write_entry

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
BASE = NOW - dt.timedelta(days=10)
H, D, M = dt.timedelta(hours=1), dt.timedelta(days=1), dt.timedelta(minutes=1)


def _entry(service, tag, outcome, start, minutes, **extra) -> LedgerEntry:
    return LedgerEntry(
        service=service,
        git_tag=tag,
        outcome=outcome,
        started_at=start.isoformat(),
        finished_at=(start + minutes * M).isoformat(),
        seconds=minutes * 60.0,
        **extra,
    )


def tagged(at: dt.datetime, source: str = "push") -> dict:
    return {"tagged_at": at.isoformat(), "tagged_at_source": source}


@pytest.fixture(scope="module")
def history(prefect_server) -> str:
    """A service with a known history, written to its ledger (newest last)."""
    svc = f"dora-{uuid.uuid4().hex[:8]}"
    stages = {"build": 60.0, "quota": 2.0, "deploy": 30.0, "canary": 20.0, "cutover": 3.0}
    ok = dict(stage_seconds=stages, canary_p50_ms=80.0, baseline_ms=400.0, cache_hit_rate=0.8)
    entries = [
        _entry(svc, "v0", "released", NOW - 40 * D, 5, **ok),  # outside the 30-day window
        # v1's tag was pushed 20 minutes before its release started (the webhook's push time),
        # v3's tag made 40 minutes before (its date in git); v5's tag time is unknown.
        _entry(svc, "v1", "released", BASE, 10, canary_p95_ms=100.0, **tagged(BASE - 20 * M), **ok),
        _entry(svc, "v2", "rolled_back", BASE + D, 5, rollback_reason="canary: x-fallback-used"),
        _entry(
            svc,
            "v3",
            "released",
            BASE + D + H,
            20,
            canary_p95_ms=120.0,
            **tagged(BASE + D + H - 40 * M, "git-tag"),
            **ok,
        ),
        _entry(svc, "v3", "released", BASE + D + 2 * H, 1, noop=True),  # a re-run: no change
        _entry(svc, "v4", "failed", BASE + 3 * D, 2, rollback_reason="build failed"),
        _entry(svc, "v5", "released", BASE + 5 * D, 15, canary_p95_ms=140.0, **ok),
        _entry(svc, "v6", "cpu_fallback", BASE + 6 * D, 8),
    ]
    for e in entries:
        write_entry(e)
    return svc


def test_report_json_gives_the_dora_figures_of_a_known_history(history):
    out = CliRunner().invoke(
        app, ["report", "--service", history, "--since", "30d", "--format", "json"]
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    figures = data["services"][history]
    # By hand: changes v1..v6 (the noop re-run and v0, 40 days ago, are not counted).
    assert figures["changes"] == 6
    assert figures["deployments"] == 3  # v1, v3, v5
    assert figures["deployment_frequency_per_day"] == 0.1  # 3 in 30 days
    # Tag to 100 %: v1 20 + 10 min, v3 40 + 20 min, v5 15 min from its start (no tag time).
    assert figures["lead_time_s"] == 1800.0  # median of 1800, 3600, 900
    assert figures["lead_time_from_release_start"] == 1  # v5
    assert figures["change_failure_rate"] == 0.5  # v2, v4, v6 of 6
    # v2 ended at BASE+1d+5m, v3 at BASE+1d+1h20m: 4500 s; v4 ended at BASE+3d+2m, v5 at
    # BASE+5d+15m: 2 d 13 min = 173580 s; median 89040 s. v6 is not restored yet.
    assert figures["time_to_restore_s"] == 89040.0
    assert figures["unrestored_failures"] == 1
    assert figures["single_page_p95"] == 138.0  # p95 of 100, 120, 140 (linear)
    tags = [r["git_tag"] for r in data["releases"]]
    assert tags == ["v1", "v2", "v3", "v3", "v4", "v5", "v6"]
    assert data["releases"][0]["s_deploy"] == 30.0


def test_report_rejects_a_bad_window():
    out = CliRunner().invoke(app, ["report", "--since", "30 days"])
    assert out.exit_code != 0
    assert "--since '30 days' is not a window; use a number and a unit" in out.output


@pytest.mark.skipif(chromium_binary() is None, reason="needs Debian's chromium (APT_PKGS)")
def test_html_report_draws_every_chart_and_fetches_nothing(history, tmp_path):
    from PIL import Image

    page_file = tmp_path / "report.html"
    out = CliRunner().invoke(
        app, ["report", "--service", history, "--format", "html", "--output", str(page_file)]
    )
    assert out.exit_code == 0, out.output
    text = page_file.read_text()
    assert "default-src 'none'" in text
    assert not re.search(r"https?://", text), "the page names a URL it could fetch"

    page = Page(width=1200, height=900)
    try:
        page.open(page_file)
        boxes = page.evaluate(
            "JSON.stringify(Object.fromEntries(["
            + ",".join(f"'{c}'" for c in CHART_IDS)
            + "].map(id => { const r = document.getElementById(id).getBoundingClientRect();"
            " return [id, [r.x, r.y + window.scrollY, r.width, r.height]]; })))"
        )
        shot = tmp_path / "report.png"
        page.screenshot(shot)
        requests = page.requests()
    finally:
        page.close()
    assert [u for u in requests if not u.startswith("file://")] == []
    image = Image.open(shot).convert("RGB")
    for chart, (x, y, w, h) in json.loads(boxes).items():
        box = image.crop((int(x) + 2, int(y) + 2, int(x + w) - 2, int(y + h) - 2))
        histogram = box.convert("L").histogram()
        drawn = sum(histogram[:200])  # darker than the white background
        assert drawn / sum(histogram) > 0.01, f"{chart} looks blank ({drawn} drawn pixels)"
