"""The CLI's common mistakes end in one line that names the fix; no traceback without --verbose."""

from __future__ import annotations

import uuid

import pytest
from cli_kit import run_cli

from shipyard.blocks.cloud import ENDPOINT_ENV, PROJECT_ENV, GoogleCloud
from shipyard.blocks.release_target import ReleaseTarget


def assert_one_line(output: str, *needles: str) -> None:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    assert "Traceback" not in output, output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("tag", ["!!!", "not a tag!!", "v1.2.3\n", "v１.2.3"])  # noqa: RUF001 - look-alike digits are the input under test
def test_a_bad_tag_is_one_line_naming_the_pattern(monkeypatch, capsys, tag):
    code, output = run_cli(monkeypatch, capsys, "release", tag, "--dry-run")
    assert code == 2
    assert_one_line(output, "TAG", "is not a release tag", "v1.4.0")


def test_no_target_block_names_the_block_to_create(monkeypatch, capsys):
    name = f"missing-{uuid.uuid4().hex[:6]}"
    code, output = run_cli(monkeypatch, capsys, "release", "v1.0.0", "--target", name)
    assert code == 2
    assert_one_line(output, f"--target '{name}'", "Shipyard Release Target")


def test_no_project_nor_sandbox_says_sandbox_up(monkeypatch, capsys):
    monkeypatch.delenv(ENDPOINT_ENV, raising=False)
    monkeypatch.delenv(PROJECT_ENV, raising=False)
    name = f"noproject-{uuid.uuid4().hex[:6]}"
    # A cloud block without a project (an empty one is setup's `sandbox` block, or refused at
    # load: tests/ui/test_target_form.py).
    ReleaseTarget(cloud=GoogleCloud()).save(name)
    code, output = run_cli(monkeypatch, capsys, "release", "v1.0.0", "--target", name)
    assert code == 2
    assert_one_line(output, "GoogleCloud.project is not set", "shipyard sandbox up")


def test_verbose_is_accepted(monkeypatch, capsys):
    code, output = run_cli(monkeypatch, capsys, "--verbose", "release", "!!!")
    assert code == 2 and "is not a release tag" in output
