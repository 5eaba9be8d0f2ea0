"""The canary's samples, read once per canary: each with its bytes and its expected answer.

A sample is read from the commit being released (`repo:PATH`: the build's git source, at the
release's git tag, in one fetch for all of them), from the worker (a path) or from the block
itself (`data_base64`). A sample that cannot be read is a configuration error that names the
field, the value and the fix.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from prefect import task
from prefect.cache_policies import NO_CACHE

from shipyard.blocks.build_settings import BuildSettings
from shipyard.blocks.canary_policy import REPO_PREFIX, CanaryPolicy, CanarySample
from shipyard.flows.canary.checks import Expectation, expectation
from shipyard.flows.release.steps import StepLog, note_attempt
from shipyard.tasks.canary_probe import SampleImage, load_sample, sample_from_bytes
from shipyard.tasks.deploy_errors import ConfigurationError
from shipyard.tasks.git_files import MissingFileError, read_files
from shipyard.tasks.git_source import redact_credentials


@dataclass(frozen=True)
class Resolved:
    """A sample ready to send: where it came from, its bytes and its expected answer."""

    label: str
    where: str  # the field that named it, for messages: samples[1].path='repo:...'
    sample: SampleImage
    expect: Expectation


@task(name="canary-samples", cache_policy=NO_CACHE, persist_result=False)
def repo_samples_step(settings_block: str | None, ref: str, paths: list[str]) -> dict[str, bytes]:
    """The files at `paths` of the release's commit, from the build's git source."""
    note_attempt()
    settings = cast(BuildSettings, BuildSettings.load(settings_block)) if settings_block else None
    settings = settings or BuildSettings()
    if not (settings.git_url or os.environ.get("SHIPYARD_GIT_URL")):
        raise ConfigurationError(
            f"canary samples {', '.join(repr(REPO_PREFIX + p) for p in paths)} are read from "
            "the released commit, but no git source is configured: set BuildSettings.git_url "
            "(or SHIPYARD_GIT_URL), or give the samples as worker paths or data_base64"
        )
    # The URL with its token only here, for git: its messages are redacted.
    try:
        return read_files(settings.resolved_git_url(), ref, paths)
    except MissingFileError as exc:
        raise ConfigurationError(
            f"canary sample {REPO_PREFIX}...: {redact_credentials(str(exc))}"
        ) from None


def _field(policy: CanaryPolicy, i: int, spec: CanarySample) -> str:
    if not policy.samples:
        return f"sample_image={policy.sample_image!r}"
    value = spec.path if spec.path is not None else "<data_base64>"
    return f"samples[{i}].{'path' if spec.path is not None else 'data_base64'}={value!r}"


def resolve_samples(
    policy: CanaryPolicy, steps: StepLog, settings_block: str | None, git_ref: str
) -> list[Resolved]:
    """Every sample of the policy, read and paired with its expected answer."""
    specs = policy.the_samples()
    repo_paths = [s.path.removeprefix(REPO_PREFIX) for s in specs if s.path and s.in_repository]
    repo: dict[str, bytes] = {}
    if repo_paths:
        repo = steps.run("canary-samples", repo_samples_step, settings_block, git_ref, repo_paths)
    out = []
    for i, spec in enumerate(specs):
        where = _field(policy, i, spec)
        expect = expectation(policy, spec if policy.samples else None)
        content_type = spec.content_type or policy.content_type
        if spec.path is not None and spec.in_repository:
            name = Path(spec.path.removeprefix(REPO_PREFIX)).name
            sample = sample_from_bytes(
                repo[spec.path.removeprefix(REPO_PREFIX)], name, content_type
            )
        elif spec.path is not None:
            try:
                sample = load_sample(Path(spec.path), content_type, require_image=False)
            except FileNotFoundError:
                raise ConfigurationError(
                    f"canary {where}: no such file on the worker: give an existing path, "
                    "repo:PATH for a file of the released commit, or leave sample_image empty "
                    "for the page Shipyard ships"
                ) from None
        else:
            data = base64.b64decode(spec.data_base64 or "")
            sample = sample_from_bytes(data, spec.label(), content_type)
        if expect.image and sample.size is None:
            raise ConfigurationError(
                f"canary {where} is not an image Pillow can read, and the answer is checked "
                "as an image like the input: use a PNG or JPEG, or set check_image=false and "
                "check the answer another way (expected_content_type, json_equals, text_pattern)"
            )
        out.append(Resolved(spec.label() if policy.samples else sample.name, where, sample, expect))
    return out
