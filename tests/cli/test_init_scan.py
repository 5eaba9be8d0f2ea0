"""`shipyard init`'s reading of a repository (no sandbox, no server): the tiers it proposes from
the files there, the Dockerfile it writes, what it says an existing Dockerfile lacks."""

from __future__ import annotations

from cli_kit import run_cli
from service_repo_kit import PYTHON_SERVICE

from shipyard.deployments.cli.repo_scan import (
    check_dockerfile,
    dockerfile_text,
    propose_tiers,
    scan,
    service_name,
)
from shipyard.flows.build.tier_fingerprint import stage_texts


def test_a_python_service_gets_no_node_tier_and_a_package_json_adds_it(make_repo):
    python_only = make_repo("translator", PYTHON_SERVICE)
    tiers = propose_tiers(scan(python_only.root))
    assert [(t.name, t.target, t.files) for t in tiers] == [
        ("base", "base", []),
        ("python", "python-deps", ["requirements.txt"]),
    ]

    with_node = make_repo(
        "with-node", {**PYTHON_SERVICE, "package.json": "{}", "package-lock.json": "{}"}
    )
    tiers = propose_tiers(scan(with_node.root))
    assert [(t.name, t.files) for t in tiers][-1] == (
        "node",
        ["package.json", "package-lock.json"],
    )


def test_the_written_dockerfile_has_one_stage_per_tier_then_runtime_and_passes_the_check(
    make_repo,
):
    found = scan(make_repo("svc", PYTHON_SERVICE).root)
    tiers = propose_tiers(found)
    text = dockerfile_text(found, tiers, None)
    prelude, stages = stage_texts(text)
    assert prelude == "ARG BASE_IMAGE"
    assert list(stages) == ["base", "python-deps", "runtime"]
    assert "uvicorn main:app" in stages["runtime"]
    check = check_dockerfile(text, tiers, "runtime")
    assert check.problems == [] and check.notes == [] and check.tiers == tiers


def test_an_existing_dockerfile_without_runtime_stage_or_base_arg_is_refused_naming_both(
    make_repo, monkeypatch, capsys
):
    repo = make_repo(
        "legacy",
        {
            **PYTHON_SERVICE,
            "Dockerfile": "FROM python:3.11-slim AS base\nCOPY . /app\nCMD python main.py\n",
        },
    )
    monkeypatch.chdir(repo.root)
    code, output = run_cli(monkeypatch, capsys, "init")
    assert code == 2, output
    (error,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert "ARG BASE_IMAGE" in error and "no `runtime` stage" in error and "AS runtime" in error
    assert "Traceback" not in output
    assert "tier python left out" in output  # no python-deps stage: said, not guessed
    assert (repo.root / "Dockerfile").read_text().startswith("FROM python:3.11-slim")  # kept


def test_the_service_is_named_after_the_repository_or_its_folder():
    assert service_name("file:///home/me/Digit_Guesser", ".") == "digit-guesser"
    assert service_name("https://github.com/org/ocr.git", ".") == "ocr"
    assert service_name("file:///repo", "services/page-service") == "page-service"
    assert service_name("file:///x/9lives", ".") == "r-9lives"
    long_name = service_name("file:///x/" + "a" * 60, ".")
    assert len(long_name) == 38  # room for the release's revision tags (blocks/names.py)
