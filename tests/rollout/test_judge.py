"""The rollout judge on request frames built here (its input is a plain DataFrame)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from shipyard.blocks.rollout_policy import JudgePolicy
from shipyard.flows.rollout.judge import COLUMNS, judge

POLICY = JudgePolicy()  # min_samples 50, alpha 0.01, bands 1 pt and x1.25
FIGURES = {
    "n_new",
    "n_stable",
    "errors_new",
    "errors_stable",
    "error_rate_new",
    "error_rate_stable",
    "error_p",
    "p50_new_ms",
    "p95_new_ms",
    "p50_stable_ms",
    "p95_stable_ms",
    "latency_ratio",
    "latency_p",
}


def _side(revision: str, latencies_s: np.ndarray, statuses: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "revision": revision,
            "status": statuses.astype("int64"),
            "latency_s": latencies_s.astype("float64"),
            "timestamp": pd.Timestamp("2026-01-05T10:00:00Z"),
        }
    )


def frame(
    n_new: int,
    n_stable: int,
    *,
    errors_new: int = 0,
    errors_stable: int = 0,
    slower: float = 1.0,
    error_status: int = 503,
    seed: int = 7,
) -> pd.DataFrame:
    """Requests of `new` and `stable`: the same lognormal latency (median 100 ms) unless
    `slower`, the first `errors_*` of each answered with `error_status`."""
    rng = np.random.default_rng(seed)

    def statuses(n: int, errors: int) -> np.ndarray:
        out = np.full(n, 200)
        out[:errors] = error_status
        return out

    new = _side(
        "pages-v2", rng.lognormal(np.log(0.1), 0.3, n_new) * slower, statuses(n_new, errors_new)
    )
    stable = _side(
        "pages-v1", rng.lognormal(np.log(0.1), 0.3, n_stable), statuses(n_stable, errors_stable)
    )
    other = _side("pages-v0", np.full(5, 9.0), np.full(5, 500))  # a third revision: ignored
    return pd.concat([new, stable, other], ignore_index=True)


def test_healthy_pair_passes_with_json_figures():
    result = judge(frame(300, 2700, errors_new=1, errors_stable=10), "pages-v2", "pages-v1", POLICY)
    assert result.verdict == "pass", result.reasons
    assert set(result.figures) == FIGURES
    assert json.loads(json.dumps(result.figures)) == result.figures  # JSON-able as they are
    f = result.figures
    assert (f["n_new"], f["n_stable"], f["errors_new"], f["errors_stable"]) == (300, 2700, 1, 10)
    assert f["error_rate_new"] == round(1 / 300, 4)
    assert 80 < f["p50_new_ms"] < 120 and f["p95_new_ms"] > f["p50_new_ms"]
    assert 0.8 < f["latency_ratio"] < 1.25 and f["error_p"] > 0.01 and f["latency_p"] > 0.01
    # The reasons summarise both comparisons with their tests and bands.
    assert result.reasons[0].startswith("errors 0.3% vs 0.4% (Fisher p=")
    assert "band 1.0 pt" in result.reasons[0]
    assert "Mann-Whitney p=" in result.reasons[1] and "band x1.25" in result.reasons[1]


def test_five_percent_errors_fail_with_the_figures():
    result = judge(frame(300, 2700, errors_new=15, errors_stable=3), "pages-v2", "pages-v1", POLICY)
    assert result.verdict == "fail"
    assert result.reasons[0].startswith("errors 5.0% vs 0.1% (Fisher p=")
    assert result.figures["error_p"] < 1e-6
    assert len(result.reasons) == 1  # the latency is the same: no latency reason


def test_twice_as_slow_fails_on_latency():
    result = judge(frame(200, 800, slower=2.0), "pages-v2", "pages-v1", POLICY)
    assert result.verdict == "fail"
    assert result.reasons[0].startswith("p95 ")
    assert "Mann-Whitney p=" in result.reasons[0]
    assert result.figures["latency_ratio"] > 1.6 and result.figures["latency_p"] < 1e-6


def test_too_few_requests_is_inconclusive_naming_the_counts():
    # Even with every request of the new revision an error: too few to judge, never a pass.
    result = judge(frame(12, 240, errors_new=12), "pages-v2", "pages-v1", POLICY)
    assert result.verdict == "inconclusive"
    assert result.reasons[0].startswith("new answered 12 requests, stable 240; min_samples 50")
    assert result.figures["error_p"] is None and result.figures["n_new"] == 12
    nothing = judge(frame(0, 0), "pages-v2", "pages-v1", POLICY)
    assert nothing.verdict == "inconclusive" and nothing.figures["p95_new_ms"] is None


def test_a_signature_fails_outright_quoting_the_line():
    line = "Failed to create CUDAExecutionProvider. Falling back to CPU"
    result = judge(frame(300, 300), "pages-v2", "pages-v1", POLICY, signatures=[line, "OOM"])
    assert result.verdict == "fail"
    assert result.reasons == (f"the new revision logged {line!r} (and 1 more)",)
    # Even when there are too few requests to judge the figures.
    assert judge(frame(3, 3), "pages-v2", "pages-v1", POLICY, signatures=[line]).verdict == "fail"


def test_a_significant_difference_inside_the_band_passes_with_a_note():
    # 1.5% vs 0.7% over 20,000 requests each: real (Fisher p < 0.01), but 0.8 pt < 1 pt.
    errors = judge(
        frame(20000, 20000, errors_new=300, errors_stable=140), "pages-v2", "pages-v1", POLICY
    )
    assert errors.verdict == "pass"
    assert errors.figures["error_p"] < 0.01
    assert any(
        "significant but within the band" in r and r.startswith("errors") for r in errors.reasons
    )
    # 10% slower over 5,000 each: significant, inside x1.25.
    slower = judge(frame(5000, 5000, slower=1.1), "pages-v2", "pages-v1", POLICY)
    assert slower.verdict == "pass" and slower.figures["latency_p"] < 0.01
    assert any("significant but within the band" in r for r in slower.reasons)


def test_429_is_an_error_and_404_is_an_answer():
    # Cloud Run's 429 is its "no available instance" refusal: a failure for the user.
    refused = judge(
        frame(300, 300, errors_new=30, error_status=429), "pages-v2", "pages-v1", POLICY
    )
    assert refused.verdict == "fail" and refused.figures["errors_new"] == 30
    # A refusal's latency is not the service's: 429s are left out of the latency figures.
    slow_refusals = frame(300, 300, errors_new=3, error_status=429)
    slow_refusals.loc[:2, "latency_s"] = 60.0
    assert judge(slow_refusals, "pages-v2", "pages-v1", POLICY).figures["p95_new_ms"] < 1000
    # A 404 is the caller's mistake, answered by the revision: not an error.
    missing = judge(
        frame(300, 300, errors_new=30, error_status=404), "pages-v2", "pages-v1", POLICY
    )
    assert missing.verdict == "pass" and missing.figures["errors_new"] == 0


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match=r"lacks column\(s\) latency_s.*read_requests"):
        judge(frame(60, 60).drop(columns=["latency_s"]), "pages-v2", "pages-v1", POLICY)
    with pytest.raises(ValueError, match="new='pages-v1', stable='pages-v1'"):
        judge(frame(60, 60), "pages-v1", "pages-v1", POLICY)
    assert COLUMNS == ("revision", "status", "latency_s", "timestamp")
