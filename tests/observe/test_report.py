"""`shipyard report` over a known ledger: DORA figures by hand, the table and the html as a person
reads them (units, outcomes, lead time's source), the html in headless Chromium (every chart
drawn, nothing fetched, no label outside its chart, every figure with its unit)."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid

import pytest
from chromium_page import Page, chromium_binary
from typer.testing import CliRunner

from shipyard.deployments.cli.main import app
from shipyard.deployments.report.figures import human_duration, report_data
from shipyard.deployments.report.html import CHART_IDS, render_html
from shipyard.flows.observe.ledger import LedgerEntry, write_entry

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
BASE = NOW - dt.timedelta(days=10)
H, D, M = dt.timedelta(hours=1), dt.timedelta(days=1), dt.timedelta(minutes=1)
STEPS = "10:pass,50:pass,100:pass"


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


def _entries(svc: str) -> list[LedgerEntry]:
    """A service with a known history (newest last)."""
    stages = {"build": 60.0, "quota": 2.0, "deploy": 30.0, "canary": 20.0, "cutover": 3.0}
    ok = dict(stage_seconds=stages, canary_p50_ms=80.0, baseline_ms=400.0, cache_hit_rate=0.8)
    return [
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
        # Not changes: a person's rollback and cancel, a release that found Google unreachable.
        _entry(svc, "v5", "rolled_back_by_hand", BASE + 7 * D, 1, by="alice"),
        _entry(svc, "v7", "cancelled", BASE + 8 * D, 3, by="bob"),
        _entry(svc, "v8", "failed_infrastructure", BASE + 9 * D, 1, rollback_reason="unreachable"),
    ]


@pytest.fixture(scope="module")
def history(prefect_server) -> str:
    """The known history, written to the service's ledger."""
    svc = f"dora-{uuid.uuid4().hex[:8]}"
    for e in _entries(svc):
        write_entry(e)
    return svc


def test_report_json_gives_the_dora_figures_of_a_known_history(history):
    out = CliRunner().invoke(
        app, ["report", "--service", history, "--since", "30d", "--format", "json"]
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    figures = data["services"][history]
    # By hand: changes v1..v6 (the noop re-run, v0 40 days ago, the hand rollback, the cancel
    # and the unreachable infrastructure are not changes).
    assert figures["changes"] == 6
    assert figures["deployments"] == 3  # v1, v3, v5
    assert figures["deployment_frequency_per_day"] == 0.1  # 3 in 30 days
    # Tag to 100 %: v1 20 + 10 min, v3 40 + 20 min, v5 15 min from its start (no tag time).
    assert figures["lead_time_s"] == 1800.0  # median of 1800, 3600, 900
    assert figures["lead_time_from_release_start"] == 1  # v5
    assert figures["lead_time_sources"] == {
        "push time": 1,
        "tag date in git": 1,
        "release start (tag time unknown)": 1,
    }
    # Only the change's failures count: v2 (rolled back) and v4 (failed) of 6; v6 (CPU
    # fallback), v7 (cancelled), v8 (infrastructure) and the hand rollback do not.
    assert figures["change_failure_rate"] == 0.3333
    assert figures["failures"] == 2
    # v2 ended at BASE+1d+5m, v3 at BASE+1d+1h20m: 4500 s; v4 ended at BASE+3d+2m, v5 at
    # BASE+5d+15m: 2 d 13 min = 173580 s; median 89040 s.
    assert figures["time_to_restore_s"] == 89040.0
    assert figures["unrestored_failures"] == 0
    assert (figures["cpu_fallbacks"], figures["rolled_back_by_hand"]) == (1, 1)
    assert (figures["cancelled"], figures["failed_infrastructure"]) == (1, 1)
    assert figures["single_page_p95"] == 138.0  # p95 of 100, 120, 140 (linear)
    tags = [r["git_tag"] for r in data["releases"]]
    assert tags == ["v1", "v2", "v3", "v3", "v4", "v5", "v6", "v5", "v7", "v8"]
    assert data["releases"][0]["s_deploy"] == 30.0
    lead = {
        r["git_tag"]: (r["lead_time_s"], r["lead_time_source"])
        for r in data["releases"]
        if r["outcome"] == "released" and not r["noop"]
    }
    assert lead == {
        "v1": (1800.0, "push time"),
        "v3": (3600.0, "tag date in git"),
        "v5": (900.0, "release start (tag time unknown)"),
    }
    assert [r["lead_time_s"] for r in data["releases"] if r["git_tag"] in ("v7", "v8")] == [
        None,
        None,
    ]  # no lead time for what did not reach 100%


def test_report_table_is_in_human_units_with_every_outcome(history):
    out = CliRunner().invoke(app, ["report", "--service", history, "--format", "table"])
    assert out.exit_code == 0, out.output
    text = out.stdout
    assert "lead_time_s" not in text and "_s " not in text, text
    assert not re.search(r"\d+\.\d{3}", text), "a raw figure (seconds with decimals) is shown"
    assert re.search(r"lead time, tag to 100% \(median\)\s+30 min", text), text
    assert re.search(r"time to restore \(median\)\s+24\.7 h", text), text
    assert re.search(r"change failure rate \(rolled back, failed\)\s+33 %", text), text
    assert "rolled back by hand (alice)" in text and "cancelled (bob)" in text
    assert "failed (infrastructure unreachable)" in text
    assert "30 min from push time" in text and "60 min from tag date in git" in text
    assert "15 min from release start (tag time unknown)" in text
    assert "lightweight tag" in text  # the legend says what a commit date stands for


def test_report_rejects_a_bad_window():
    out = CliRunner().invoke(app, ["report", "--since", "30 days"])
    assert out.exit_code != 0
    assert "--since '30 days' is not a window; use a number and a unit" in out.output


def test_durations_read_as_a_person_says_them():
    assert [human_duration(s) for s in (4.25, 45, 420, 8280, 469995.275, None)] == [
        "4.2 s",
        "45 s",
        "7 min",
        "2.3 h",
        "5.4 days",
        "—",
    ]


def _crowded() -> dict:
    """Two services, one with a long name and long tags (labels that would be cut at the old
    170 px anchor), a lead time of days, a rollout's steps."""
    long = "translation-page-service-for-the-european-customers"
    entries = [
        *_entries("pages"),
        _entry(
            long,
            "v10.20.30-rc.1+build.20260212",
            "released",
            BASE + 2 * D,
            140,
            **tagged(BASE - 3 * D, "git-tag"),
            tagged_at_note="lightweight tag: its commit's date",
            stage_seconds={"build": 6000.0, "deploy": 1200.0, "canary": 1200.0},
            canary_p95_ms=28000.0,
            baseline_ms=444000.0,
        ),
        _entry(long, "v10.20.31", "rolled_back_by_hand", BASE + 4 * D, 2, by="carol"),
    ]
    data = report_data(entries, 30.0, NOW)
    for row in data["releases"]:  # a ledger without H3's `steps` field yet: the html's input
        if row["outcome"] == "released" and not row.get("steps"):
            row["steps"] = STEPS
    return data


UNIT = (
    r"^(—|-?[\d,.]+ ?(s|min|h|days|ms|%|/ day|/ week|changes?|releases?|failures?|rollbacks?)"
    r"|\d+ from .+)$"
)
CHECK_JS = """JSON.stringify((() => {
  const out = {outside: [], unitless: [], figures: 0, cut: []};
  for (const svg of document.querySelectorAll('svg')) {
    const b = svg.getBoundingClientRect();
    for (const t of svg.querySelectorAll('text')) {
      const r = t.getBoundingClientRect();
      if (r.left < b.left - 0.5 || r.right > b.right + 0.5 || r.top < b.top - 0.5
          || r.bottom > b.bottom + 0.5)
        out.outside.push([svg.id, t.textContent, r.left - b.left, b.right - r.right]);
      const title = t.querySelector('title');
      if (title) out.cut.push(title.textContent);
    }
  }
  const unit = new RegExp(UNIT);
  for (const el of document.querySelectorAll('td.fig, svg text.axis')) {
    out.figures += 1;
    // What is shown: a cut label's whole text is its tooltip (<title>), not on screen.
    const shown = [...el.childNodes].filter(n => n.nodeName !== 'title')
      .map(n => n.textContent).join('').trim();
    if (!unit.test(shown)) out.unitless.push(shown);
  }
  out.text = document.body.innerText;
  out.boxes = Object.fromEntries(IDS.map(id => {
    const r = document.getElementById(id).getBoundingClientRect();
    return [id, [r.x, r.y + window.scrollY, r.width, r.height]];
  }));
  return out;
})())"""


@pytest.mark.skipif(chromium_binary() is None, reason="needs Debian's chromium (APT_PKGS)")
def test_html_report_in_chromium_fits_its_labels_and_gives_units(history, tmp_path):
    from PIL import Image

    ledger_page = tmp_path / "report.html"
    out = CliRunner().invoke(
        app, ["report", "--service", history, "--format", "html", "--output", str(ledger_page)]
    )
    assert out.exit_code == 0, out.output
    crowded_page = tmp_path / "crowded.html"
    crowded_page.write_text(render_html(_crowded()), encoding="utf-8")
    js = CHECK_JS.replace("UNIT", json.dumps(UNIT)).replace("IDS", json.dumps(list(CHART_IDS)))

    page = Page(width=1200, height=900)
    try:
        page.send("Network.enable")  # every request the pages make is recorded
        results, shots = {}, {}
        for name, path in (("ledger", ledger_page), ("crowded", crowded_page)):
            text = path.read_text()
            assert "default-src 'none'" in text
            assert not re.search(r"https?://", text), "the page names a URL it could fetch"
            page.goto(path.resolve().as_uri())  # waits for this load, not the last one
            answer = page.send("Runtime.evaluate", expression=js, returnByValue=True)
            assert "exceptionDetails" not in answer, answer
            results[name] = json.loads(answer["result"]["value"])
            shots[name] = tmp_path / f"{name}.png"
            page.screenshot(shots[name])
        requests = page.requests()
    finally:
        page.close()
    assert [u for u in requests if not u.startswith("file://")] == []
    assert {u.rsplit("/", 1)[-1] for u in requests} == {"report.html", "crowded.html"}, requests
    for name, got in results.items():
        assert got["outside"] == [], f"{name}: labels leave their chart: {got['outside']}"
        assert got["figures"] > 20 and got["unitless"] == [], f"{name}: {got['unitless']}"
        assert "lead_time_s" not in got["text"] and not re.search(r"\d+\.\d{3}", got["text"])
        image = Image.open(shots[name]).convert("RGB")
        for chart, (x, y, w, h) in got["boxes"].items():
            box = image.crop((int(x) + 2, int(y) + 2, int(x + w) - 2, int(y + h) - 2))
            histogram = box.convert("L").histogram()
            drawn = sum(histogram[:200])  # darker than the white background
            assert drawn / sum(histogram) > 0.01, f"{name}: {chart} looks blank ({drawn} px)"
    crowded = results["crowded"]
    text = crowded["text"]
    # The long label was cut and keeps its whole text as a tooltip; its tag stays readable.
    long_label = "translation-page-service-for-the-european-customers v10.20.30-rc.1+build.20260212"
    assert long_label in crowded["cut"], crowded["cut"]
    assert "2.3 h" in text and "5.1 days" in text  # a 140 min release; 5 days + 2 h 20 min
    assert "commit date (lightweight tag)" in text and "push time" in text
    assert "rolled back by hand (carol)" in text and "cancelled (bob)" in text
    assert STEPS in text
    ledger = results["ledger"]["text"]
    assert "rolled back by hand (alice)" in ledger and "33 %" in ledger and "30 min" in ledger
