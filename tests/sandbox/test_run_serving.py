"""Revisions serve the sample page service for real: speed by device, faults, token, logs."""

from __future__ import annotations

import io

import httpx
import pytest
from google.cloud import run_v2
from PIL import Image
from run_testkit import FAILED, FAST, create, page_png, parent, template

TOKEN = "s3cret-token-for-tests"
SERVING = {
    "name": "serving",
    "serving": {"gpu_ms": 5, "cpu_ms": 300},
    "secrets": {"page-token": TOKEN},
    "revision_faults": [
        {"fault": "silent_cpu_fallback", "accelerator": "gpu", "image_contains": "fallback"},
        {"fault": "oom", "accelerator": "any", "image_contains": "oom"},
        {"fault": "http_503", "accelerator": "any", "image_contains": "flaky", "requests": 2},
        {"fault": "unicode_header", "accelerator": "any", "image_contains": "unicode"},
    ],
}
PAGE = "/internal/translate/page"


@pytest.fixture
def http():
    with httpx.Client(timeout=20) as client:
        yield client


def _post_page(http: httpx.Client, uri: str, **headers: str) -> httpx.Response:
    return http.post(
        uri + PAGE, content=page_png(), headers={"content-type": "image/png", **headers}
    )


def _logs_of(admin, service: str) -> list[dict]:
    return [e for e in admin.logs() if e["resource"]["labels"].get("service_name") == service]


def test_gpu_revision_is_fast_and_cpu_slow(sandbox_admin, cloud, http):
    sandbox_admin.reset(scenario_data=SERVING)
    gpu = create(cloud, "fast", template(gpu=True))
    cpu = create(cloud, "slow", template())
    answers = {}
    for name, svc in (("gpu", gpu), ("cpu", cpu)):
        response = _post_page(http, svc.uri)
        assert response.status_code == 200, response.text
        assert response.headers["x-fallback-used"] == "0"
        image = Image.open(io.BytesIO(response.content))
        assert (image.format, image.size) == ("PNG", (120, 80))
        answers[name] = int(response.headers["x-remote-elapsed-ms"])
        assert http.get(svc.uri + "/health").json()["device"] == name
    assert answers["cpu"] >= 300 and answers["gpu"] < answers["cpu"]
    # A multipart upload works as well.
    multipart = http.post(gpu.uri + PAGE, files={"file": ("page.png", page_png(), "image/png")})
    assert multipart.status_code == 200 and multipart.content[:4] == b"\x89PNG"

    requests_log = [
        e for e in _logs_of(sandbox_admin, "fast") if e["logName"].endswith("%2Frequests")
    ]
    assert {e["httpRequest"]["status"] for e in requests_log} == {200}
    assert requests_log[0]["resource"]["type"] == "cloud_run_revision"


def test_silent_cpu_fallback_is_visible_in_header_and_log(sandbox_admin, cloud, http):
    sandbox_admin.reset(scenario_data=SERVING)
    svc = create(cloud, "sneaky", template("registry.local/pages:fallback", gpu=True))
    response = _post_page(http, svc.uri)
    assert response.status_code == 200
    assert response.headers["x-fallback-used"] == "1"
    assert int(response.headers["x-remote-elapsed-ms"]) >= 300  # CPU speed
    texts = [e["textPayload"] for e in _logs_of(sandbox_admin, "sneaky")]
    assert any("Failed to create CUDAExecutionProvider" in t for t in texts)
    assert any("libcudnn_cnn.so.9: undefined symbol" in t for t in texts)
    # The same fault on a CPU revision does not apply (accelerator: gpu).
    plain = create(cloud, "plain", template("registry.local/pages:fallback"))
    assert _post_page(http, plain.uri).headers["x-fallback-used"] == "0"


def test_oom_503_and_unicode_faults(sandbox_admin, cloud, http):
    sandbox_admin.reset(scenario_data=SERVING)
    oom = create(cloud, "hungry", template("registry.local/pages:oom"))
    # Google's OOM: the client gets a 503; the platform logs the limit and the kill
    # (dart-lang/pub-dev#9554, SkyTruth/cerulean-cloud#90).
    assert _post_page(http, oom.uri).status_code == 503
    texts = [e.get("textPayload", "") for e in _logs_of(sandbox_admin, "hungry")]
    assert any(
        t.startswith("Memory limit of 4096 MiB exceeded with ")
        and "Consider increasing the memory limit" in t
        for t in texts
    )
    assert "Container terminated on signal 9." in texts
    errors = [e for e in _logs_of(sandbox_admin, "hungry") if e["severity"] == "ERROR"]
    assert any(e["logName"].endswith("run.googleapis.com%2Fstderr") for e in errors)

    flaky = create(cloud, "flaky", template("registry.local/pages:flaky"))
    assert [_post_page(http, flaky.uri).status_code for _ in range(3)] == [503, 503, 200]

    uni = create(cloud, "unicode", template("registry.local/pages:unicode"))
    assert _post_page(http, uni.uri).status_code == 500
    texts = [e["textPayload"] for e in _logs_of(sandbox_admin, "unicode") if "textPayload" in e]
    assert any("UnicodeEncodeError" in t for t in texts)


def test_internal_token_required_and_never_logged(sandbox_admin, cloud, http):
    sandbox_admin.reset(scenario_data=SERVING)
    tpl = template()
    tpl.containers[0].env = [
        run_v2.EnvVar(
            name="INTERNAL_TOKEN",
            value_source=run_v2.EnvVarSource(
                secret_key_ref=run_v2.SecretKeySelector(secret="page-token", version="latest")
            ),
        )
    ]
    svc = create(cloud, "private", tpl)
    assert _post_page(http, svc.uri).status_code == 401
    assert _post_page(http, svc.uri, **{"x-internal-token": "wrong"}).status_code == 401
    assert _post_page(http, svc.uri, **{"X-Internal-Token": TOKEN}).status_code == 200
    assert http.get(svc.uri + "/health").status_code == 200
    assert TOKEN not in str(sandbox_admin.logs())
    assert TOKEN not in str(cloud.services_client().get_service(name=svc.name))

    # A secret that Secret Manager does not have: the revision fails, like on Google.
    missing = template()
    missing.containers[0].env = [
        run_v2.EnvVar(
            name="INTERNAL_TOKEN",
            value_source=run_v2.EnvVarSource(
                secret_key_ref=run_v2.SecretKeySelector(secret="nope", version="1")
            ),
        )
    ]
    op = cloud.services_client().create_service(
        parent=parent(cloud), service=run_v2.Service(template=missing), service_id="nosecret"
    )
    assert op.exception(timeout=10) is not None
    rev = next(
        iter(cloud.revisions_client().list_revisions(parent=f"{parent(cloud)}/services/nosecret"))
    )
    assert rev.conditions[0].state == FAILED
    assert "secrets/nope/versions/1 was not found" in rev.conditions[0].message


def test_a_gpu_instance_over_the_region_quota_answers_googles_503(sandbox_admin, cloud, http):
    """GPU quota 1 and a warm GPU revision (min instances 1, serving): another GPU revision of
    the region cannot start an instance, so its request gets a 503 with Google's text, which
    the request log carries (nirholas/three.ws docs/ops/production-log-triage.md). Once the warm
    revision is no longer addressable, its instance stops and the other one starts."""
    sandbox_admin.reset(scenario_data={**SERVING, "default_region": {"gpu_no_zonal_redundancy": 1}})
    warm_tpl = template("registry.local/pages:warm", gpu=True)
    warm_tpl.scaling.min_instance_count = 1
    warm = create(cloud, "warm", warm_tpl)
    cold = create(cloud, "cold", template("registry.local/pages:cold", gpu=True))
    assert http.get(warm.uri + "/health").status_code == 200

    refused = _post_page(http, cold.uri)

    text = (
        "The request failed because the project exceeded its quota limit for "
        "run.googleapis.com/nvidia_l4_gpu_allocation_no_zonal_redundancy"
    )
    assert refused.status_code == 503 and refused.text == text
    requests_log = [
        e for e in _logs_of(sandbox_admin, "cold") if e["logName"].endswith("%2Frequests")
    ]
    assert [(e["httpRequest"]["status"], e["textPayload"]) for e in requests_log] == [(503, text)]
    assert sandbox_admin.calls()["run.instance_quota_exceeded"] == 1

    # The warm service goes away (its revision is no longer addressable): the GPU is free.
    cloud.services_client().delete_service(name=warm.name).result(polling=FAST)
    assert _post_page(http, cold.uri).status_code == 200
