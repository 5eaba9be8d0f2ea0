"""Where the canary's samples come from, and what old policies mean.

- `repo:PATH` is read from the commit being released (the build's git source at the release's
  tag), not from the repository's later commits, nor from the worker;
- a policy saved before the request/answer fields existed loads meaning what it meant: the
  sample as the raw body, an image like the input back, `x-fallback-used: 0`, the speed-up;
- the lines a failed canary cites from the revision's logs are the ones naming the error.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentCreate

from shipyard.blocks.build_settings import BuildSettings
from shipyard.blocks.canary_policy import (
    PACKAGED_SAMPLE_IMAGE,
    CanaryPolicy,
    CanarySample,
    MultipartBody,
)
from shipyard.flows.canary.checks import expectation, request_shape
from shipyard.flows.canary.probing import probe_policy
from shipyard.flows.canary.samples import resolve_samples
from shipyard.flows.release.steps import StepLog
from shipyard.tasks.canary_logs import error_line
from shipyard.tasks.deploy_errors import ConfigurationError

GIT = ["git", "-c", "user.email=tests@shipyard.invalid", "-c", "user.name=shipyard tests"]


@pytest.fixture
def service_repo(tmp_path, digits) -> str:
    """A BuildSettings block over a git repository whose tag v1.0.0 has tests/samples/seven.png
    (a 7) and whose later commit replaced it with a 4."""
    root = tmp_path / "service"
    (root / "tests" / "samples").mkdir(parents=True)
    sample = root / "tests" / "samples" / "seven.png"
    sample.write_bytes(digits[7].read_bytes())
    subprocess.run([*GIT, "init", "-q", "-b", "main", str(root)], check=True, timeout=30)
    subprocess.run([*GIT, "-C", str(root), "add", "-A"], check=True, timeout=30)
    subprocess.run([*GIT, "-C", str(root), "commit", "-qm", "samples"], check=True, timeout=30)
    subprocess.run([*GIT, "-C", str(root), "tag", "v1.0.0"], check=True, timeout=30)
    sample.write_bytes(digits[4].read_bytes())
    subprocess.run([*GIT, "-C", str(root), "commit", "-qam", "later"], check=True, timeout=30)
    name = f"canary-src-{uuid.uuid4().hex[:8]}"
    BuildSettings(git_url=f"file://{root}").save(name)
    return name


def test_repo_samples_come_from_the_released_tag(guess_service, digits, service_repo):
    policy = CanaryPolicy(
        path="/guess",
        body=MultipartBody(field="image"),
        samples=[CanarySample(path="repo:tests/samples/seven.png", json_equals={"digit": 7})],
        token_secret=None,
        required_headers={},
        runs=1,
        retries=0,
    )
    steps = StepLog()

    samples = resolve_samples(policy, steps, service_repo, "v1.0.0")

    assert [s.name for s in steps.steps] == ["canary-samples"]  # one fetch for all of them
    (resolved,) = samples
    assert resolved.sample.data == digits[7].read_bytes()  # the tag's file, not the later one
    assert resolved.label == "seven.png" and resolved.sample.content_type == "image/png"
    assert not resolved.expect.image  # judged as JSON
    _, reasons = probe_policy(policy, guess_service, samples)
    assert reasons == []


def test_a_repo_sample_missing_at_the_tag_names_the_path_and_the_fix(service_repo):
    policy = CanaryPolicy(
        samples=[CanarySample(path="repo:tests/samples/eight.png", json_equals={"digit": 8})]
    )

    with pytest.raises(ConfigurationError) as caught:
        resolve_samples(policy, StepLog(), service_repo, "v1.0.0")

    message = str(caught.value)
    assert "'tests/samples/eight.png'" in message and "'v1.0.0'" in message
    assert "relative to the repository's root" in message


async def _save_old_document(name: str, data: dict) -> None:
    await CanaryPolicy.register_type_and_schema()
    async with get_client() as client:
        block_type = await client.read_block_type_by_slug(CanaryPolicy.get_block_type_slug())
        schema = await client.read_block_schema_by_checksum(
            CanaryPolicy._calculate_schema_checksum()
        )
        await client.create_block_document(
            BlockDocumentCreate(
                name=name, data=data, block_schema_id=schema.id, block_type_id=block_type.id
            )
        )


# A policy as the block form saved it before the request and answer fields existed.
OLD_DOCUMENT = {
    "sample_image": None,
    "health_path": "/health",
    "method": "POST",
    "path": "/internal/translate/page",
    "content_type": None,
    "auth_header": "X-Internal-Token",
    "token_secret": "shipyard-internal-token",
    "runs": 3,
    "expected_status": 200,
    "required_headers": {"x-fallback-used": "0"},
    "p95_limit_ms": 90000,
    "min_speedup": 0.3,
    "baseline_max_age_days": 30,
    "check_image": True,
    "log_signatures": ["Failed to create CUDAExecutionProvider"],
    "log_settle_s": 10,
    "request_timeout_s": 900,
    "retry_statuses": [429, 502, 503, 504],
    "retries": 3,
    "retry_delay_s": 1,
}


@pytest.mark.parametrize("check_image", [True, None], ids=["saved", "default"])
def test_an_old_saved_policy_means_what_it_meant(check_image):
    name = f"canary-old-{uuid.uuid4().hex[:8]}"
    asyncio.run(_save_old_document(name, {**OLD_DOCUMENT, "check_image": check_image}))

    policy = CanaryPolicy.load(name)

    assert request_shape(policy).kind == "raw" and policy.headers == {}
    (sample,) = policy.the_samples()
    assert sample.path == str(PACKAGED_SAMPLE_IMAGE)
    expect = expectation(policy)
    assert expect.image is True  # an image like the input, as before
    assert expect.status == 200 and expect.headers == {"x-fallback-used": "0"}
    assert (expect.content_type, expect.json_equals, expect.text_pattern) == (None, {}, None)
    assert policy.min_speedup == 0.3 and policy.p95_limit_ms == 90000


def test_the_cited_log_line_is_the_one_naming_the_error():
    # Cloud Run: each stderr line of a traceback is an entry of its own, without a severity.
    assert error_line("Traceback (most recent call last):", "DEFAULT") == ""
    assert error_line('  File "/app/main.py", line 9, in <module>', "DEFAULT") == ""
    assert error_line("    import onnxruntime", "DEFAULT") == ""
    assert error_line("GET /health 200", "DEFAULT") == ""
    missing = "ModuleNotFoundError: No module named 'onnxruntime'"
    assert error_line(missing, "DEFAULT") == missing
    # A structured entry holding the whole traceback: its first line and the exception.
    logged = "Exception in ASGI application\nTraceback (most recent call last):\n  File x\n"
    logged += "UnicodeEncodeError: 'latin-1' codec can't encode characters"
    assert error_line(logged, "ERROR") == (
        "Exception in ASGI application … UnicodeEncodeError: 'latin-1' codec can't encode "
        "characters"
    )
