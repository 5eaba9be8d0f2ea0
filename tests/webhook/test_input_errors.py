"""Malformed configuration and references fail with the field, the value and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize(
    "ref, words",
    [
        ("repo:v1\nforged", ["tag 'v1\\nforged'"]),
        ("repo@sha256:" + "A" * 64, ["digest"]),
        ("Repo:v1", ["repository part 'Repo'", "lowercase"]),
        ("host:99999999/r:t", ["reference"]),
    ],
)
def test_image_references_refused_naming_the_part(ref, words):
    from shipyard.tasks.registry import InvalidReference, parse_reference

    with pytest.raises(InvalidReference) as caught:
        parse_reference(ref)
    for word in words:
        assert word in str(caught.value)
    assert "expected [REGISTRY[:PORT]/]REPOSITORY" in str(caught.value)


@pytest.mark.parametrize("cpu", ["four", "4\n", "4 cores", "٤", ""])
def test_cpu_quantity_refused_naming_the_field(cpu):
    from pydantic import ValidationError

    from shipyard.blocks.revision_templates import RevisionSpec

    with pytest.raises(ValidationError) as caught:
        RevisionSpec(cpu=cpu)
    assert "is not a Cloud Run CPU quantity: use e.g. '4' or '500m'" in str(caught.value)
    assert RevisionSpec(cpu="500m").cpu_count() == 0.5


def test_scenario_file_errors_name_the_key(tmp_path):
    from sandbox.scenario import ScenarioError, load_scenario

    path = tmp_path / "bad.yaml"
    path.write_text("regions: {europe-west1: {gpu: many}}\n")
    with pytest.raises(ScenarioError, match=r"key 'regions\.europe-west1\.gpu'"):
        load_scenario(str(path))


def test_a_push_without_a_commit_renders_no_commit_in_the_trigger():
    """A `create` that no push superseded carries no commit. prefect.yaml's trigger renders
    `{{ event.payload.commit }}` with Prefect's own template renderer, as text: a null payload
    value became the git ref "None". The event says "" instead, which the release reads as
    "not given"."""
    from prefect.server.utilities.user_templates import render_user_template_sync

    from shipyard.deployments.serve import read_specs
    from shipyard.deployments.webhook.parse import TagPush

    push = TagPush("github", "d-1", "acme/page", "v1.2.3", None, "refs/tags/v1.2.3")
    (release,) = [
        s for s in read_specs(Path(__file__).parents[2] / "prefect.yaml") if s.name == "release"
    ]
    template = release.triggers[0]["parameters"]["commit"]
    assert render_user_template_sync(template, {"event": push.event()}) == ""
