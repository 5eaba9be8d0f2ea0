"""The canary speaks the service's own protocol: a real service (tests/canary/guess_service_app.py,
its own process) probed through the canary's functions (flows/canary/probing.py `probe_policy`:
the request task, the answer checks, the verdict's reasons).

Each failure message must say what was sent (method, path, content type, size) and what came
back (status, content type, the first bytes)."""

from __future__ import annotations

import base64
import json
import secrets

import pytest
import secrets_scan_kit
from pydantic import SecretStr

from shipyard.blocks.canary_policy import CanaryPolicy, CanarySample, JsonBody, MultipartBody
from shipyard.flows.canary.probing import probe_policy
from shipyard.flows.canary.samples import resolve_samples
from shipyard.flows.release.steps import StepLog


def own_service(**fields) -> CanaryPolicy:
    """A policy for a team's own service: no internal token, no page-service header, no
    speed-up (that needs a CPU baseline revision), one run."""
    base = dict(
        token_secret=None,
        health_path=None,
        required_headers={},
        min_speedup=None,
        runs=1,
        retries=0,
        request_timeout_s=30,
    )
    return CanaryPolicy(**{**base, **fields})


def probe(policy: CanaryPolicy, url: str, token: SecretStr | None = None):
    samples = resolve_samples(policy, StepLog(), None, "unused")
    return probe_policy(policy, url, samples, token=token)


def test_multipart_in_json_out_passes(guess_service, digits):
    policy = own_service(
        path="/guess",
        body=MultipartBody(field="image"),
        sample_image=str(digits[7]),
        expected_content_type="application/json",
        json_equals={"digit": 7},
        runs=2,
    )

    runs, reasons = probe(policy, guess_service)

    assert reasons == []
    assert [r.status for r in runs] == [200, 200]
    assert runs[0].problems == [] and runs[0].image == ""  # not judged as an image


def test_a_wrong_json_field_says_what_was_sent_and_what_came_back(guess_service, digits):
    size = digits[7].stat().st_size
    policy = own_service(
        path="/guess",
        body=MultipartBody(field="image"),
        sample_image=str(digits[7]),
        json_equals={"digit": 3},
        runs=3,
    )

    _, reasons = probe(policy, guess_service)

    # The same failure of three runs is said once, naming the runs.
    assert len(reasons) == 1, reasons
    (reason,) = reasons
    assert reason.startswith("runs 1-3: JSON digit = 7, expected 3; ")
    assert (
        f"sent POST /guess multipart/form-data (field image: seven.png image/png, {size} B)"
        in reason
    )
    assert "got 200 application/json" in reason
    assert '`{"digit":7,"label":"digit-7"' in reason  # the answer's first bytes


def test_the_issues_raw_post_to_a_multipart_handler_is_explained(guess_service, digits):
    """The issue's story: the default raw body to the multipart handler answered 400 three
    times, and nothing said what had been sent."""
    policy = own_service(path="/guess", sample_image=str(digits[7]), runs=3)

    _, reasons = probe(policy, guess_service)

    (reason,) = reasons
    size = digits[7].stat().st_size
    assert reason.startswith("runs 1-3: status 400, expected 200; ")
    assert f"sent POST /guess image/png (seven.png), {size} B" in reason
    assert 'got 400 application/json, 36 B: `{"error":"no file in field \'image\'"}`' in reason


def test_json_with_the_sample_in_base64_and_an_extra_header(guess_service, digits):
    policy = own_service(
        path="/guess-json",
        body=JsonBody(base64_field="inputs.0.data", fields={"model": "digits"}),
        headers={"x-model": "digits"},
        sample_image=str(digits[3]),
        json_matches={"label": r"^digit-3$"},
        json_equals={"confidence": 0.93},
    )

    runs, reasons = probe(policy, guess_service)
    assert reasons == [] and runs[0].status == 200

    without_header = policy.model_copy(update={"headers": {}})
    _, reasons = probe(without_header, guess_service)
    (reason,) = reasons
    assert reason.startswith("run 1: status 400, expected 200; sent POST /guess-json")
    assert "application/json (three.png base64 at inputs.0.data)" in reason
    assert "header x-model: digits missing" in reason


def test_raw_body_with_a_text_pattern(guess_service, digits):
    policy = own_service(
        path="/guess-text",
        sample_image=str(digits[4]),
        expected_content_type="text/plain",
        text_pattern=r"digit: 4\b",
    )

    _, reasons = probe(policy, guess_service)
    assert reasons == []

    wrong = policy.model_copy(update={"text_pattern": r"digit: 9\b"})
    _, reasons = probe(wrong, guess_service)
    (reason,) = reasons
    assert reason.startswith("run 1: the answer does not contain /digit: 9\\b/; ")
    assert "got 200 text/plain, 9 B: `digit: 4\\n`" in reason


def test_several_samples_each_with_its_own_expected_answer(guess_service, digits):
    inline = base64.b64encode(digits[3].read_bytes()).decode()
    policy = own_service(
        path="/guess",
        body=MultipartBody(field="image"),
        expected_content_type="application/json",
        samples=[
            CanarySample(path=str(digits[7]), json_equals={"digit": 7}),
            CanarySample(name="three (inline)", data_base64=inline, json_equals={"digit": 3}),
            # Expected 9, but the picture reads as 4: only this sample fails.
            CanarySample(path=str(digits[4]), json_equals={"digit": 9}),
        ],
        runs=2,
    )

    runs, reasons = probe(policy, guess_service)

    assert [(r.sample, r.run) for r in runs] == [
        ("seven.png", 1),
        ("seven.png", 2),
        ("three (inline)", 1),
        ("three (inline)", 2),
        ("four.png", 1),
        ("four.png", 2),
    ]
    assert len(reasons) == 1, reasons
    assert reasons[0].startswith("runs 1-2 (four.png): JSON digit = 4, expected 9; sent POST")


def test_a_service_echoing_the_token_never_puts_it_in_a_message(guess_service, digits):
    # Registered: the end-of-session scan (tests/conftest.py) finds it nowhere either.
    token = secrets_scan_kit.remember("echoed canary token", "tok-" + secrets.token_hex(12))
    policy = own_service(
        path="/guess", body=MultipartBody(field="image"), sample_image=str(digits[7])
    )

    _, reasons = probe(policy, guess_service, token=SecretStr(token))

    (reason,) = reasons
    assert "status 403, expected 200" in reason
    assert "token [redacted] refused" in reason and token not in reason


def test_a_json_file_sample_is_sent_as_the_document(guess_service, digits):
    document = {"model": "digits", "inputs": [{"data": base64.b64encode(digits[7].read_bytes())}]}
    raw = json.dumps(document, default=bytes.decode).encode()
    policy = own_service(
        path="/guess-json",
        body=JsonBody(base64_field=None),
        headers={"x-model": "digits"},
        samples=[
            CanarySample(
                name="seven.json",
                data_base64=base64.b64encode(raw).decode(),
                json_equals={"digit": 7},
            )
        ],
    )

    runs, reasons = probe(policy, guess_service)

    assert reasons == [] and runs[0].sample == "seven.json"


def test_a_bad_pattern_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"json_matches\['label'\]='\[a' is not a regular"):
        CanarySample(path="seven.png", json_matches={"label": "[a"})
