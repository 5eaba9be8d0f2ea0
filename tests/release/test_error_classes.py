"""The one classification of errors (tasks/errors.py), over every exception class a release
can meet: google-api-core's, the REST transport's (requests, urllib3 via requests, google.auth),
httpx's, the standard library's and our own. Then the same through the official clients over
HTTP against the emulator's injected faults and its ErrorInfo."""

from __future__ import annotations

import asyncio
import inspect
import json

import google.auth.exceptions as gauth
import httpx
import pytest
import requests
from google.api_core import exceptions as gexc
from prefect.exceptions import TerminationSignal

from shipyard.flows.build.cloud_build_run import BuildFailedError
from shipyard.tasks.cloud_build import BuildTimeout
from shipyard.tasks.cloud_run import ReadyTimeout, RevisionFailed
from shipyard.tasks.deploy_errors import (
    ConfigurationError,
    DeployFailed,
    ImageFault,
    QuotaDenied,
    classify,
)
from shipyard.tasks.errors import (
    PermanentError,
    TransientError,
    error_reason,
    is_quota_error,
    is_transient,
    quota_kind,
    retry_condition_fn,
)

GPU_QUOTA = "Quota exceeded for total allowable count of GPUs per project per region"
RATE_INFO = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED"}
QUOTA_INFO = {
    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
    "reason": "RESOURCE_QUOTA_EXCEEDED",
}


def _httpx_status(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "https://example.invalid/")
    return httpx.HTTPStatusError(
        "x", request=request, response=httpx.Response(code, request=request)
    )


def _google(cls, message="m", info=None):
    return cls(message, details=[info] if info else [], error_info=info)


def _rest(code: int, status: str, message: str = "m") -> gexc.GoogleAPICallError:
    """An error as the REST transport raises it: google-api-core maps the HTTP status only
    (409 -> Conflict, whether the body says ABORTED or ALREADY_EXISTS)."""
    response = requests.Response()
    response.status_code = code
    body = {"error": {"code": code, "message": message, "status": status}}
    response._content = json.dumps(body).encode()
    response.request = requests.Request("PATCH", "https://run.googleapis.com/v2/x").prepare()
    return gexc.from_http_response(response)


# Google's own words (tasks/errors.py cites where they were seen).
MAX_SCALE = (
    "spec.template.spec.containers.resources.limits.cpu: Invalid value specified for cpu. For "
    "the specified value, maxScale may not exceed 10.\nConsider running your workload in a "
    "region with greater capacity, decreasing your requested cpu-per-instance, or requesting an "
    "increase in quota for this region if you are seeing sustained usage near this limit, see "
    "https://cloud.google.com/run/quotas."
)
MAX_INSTANCES = "Max instances must be set to 200 or fewer to set the requested total CPU."


TABLE = [
    # google-api-core, as the REST transport raises them
    (gexc.InternalServerError("boom"), True),
    (gexc.BadGateway("502"), True),
    (gexc.ServiceUnavailable("503"), True),
    (gexc.GatewayTimeout("504"), True),
    (gexc.DeadlineExceeded("deadline"), True),
    (gexc.Unknown("unknown"), True),
    (gexc.TooManyRequests("429"), True),
    (_google(gexc.ResourceExhausted, "per minute", RATE_INFO), True),
    (_google(gexc.TooManyRequests, "slow down", RATE_INFO), True),
    (_google(gexc.TooManyRequests, "anything", QUOTA_INFO), False),
    (gexc.TooManyRequests(GPU_QUOTA), False),  # no ErrorInfo: the text decides
    (gexc.MethodNotImplemented("501"), False),
    (gexc.BadRequest("400"), False),
    (gexc.InvalidArgument("bad"), False),
    (gexc.Unauthorized("401"), False),
    (gexc.Forbidden("403"), False),
    (gexc.PermissionDenied("no"), False),
    (gexc.NotFound("404"), False),
    (gexc.Conflict("409"), False),
    (gexc.AlreadyExists("exists"), False),
    (gexc.Aborted("etag"), True),  # a concurrent change: the step reads again and retries
    (_rest(409, "ABORTED", "etag mismatch"), True),  # the same over REST: a Conflict
    (_rest(409, "ALREADY_EXISTS"), False),
    (gexc.from_http_status(408, "request timeout"), True),
    (_httpx_status(408), True),
    (gexc.ServiceUnavailable("Quota exceeded: the backend is overloaded"), True),  # a 503
    (_google(gexc.ServiceUnavailable, "quota exceeded", QUOTA_INFO), True),
    (_rest(503, "UNAVAILABLE", "quota exceeded, try again"), True),
    (gexc.InvalidArgument(MAX_SCALE), False),
    (gexc.FailedPrecondition("not ready"), False),
    (gexc.Cancelled("cancelled"), False),
    # the REST transport (requests, urllib3 wrapped by requests) and google.auth
    (requests.exceptions.ConnectionError("reset"), True),
    (requests.exceptions.ConnectTimeout("connect"), True),
    (requests.exceptions.ReadTimeout("read"), True),
    (requests.exceptions.Timeout("timeout"), True),
    (requests.exceptions.ChunkedEncodingError("IncompleteRead"), True),
    (requests.exceptions.SSLError("ssl"), True),  # a ConnectionError subclass, as api-core says
    (requests.exceptions.InvalidURL("url"), False),
    (requests.exceptions.MissingSchema("schema"), False),
    (gauth.TransportError("token endpoint unreachable"), True),
    (gauth.RefreshError("invalid_grant"), False),
    (gauth.DefaultCredentialsError("no credentials"), False),
    # httpx (the OCI registry and the canary probe)
    (httpx.ConnectError("refused"), True),
    (httpx.ReadTimeout("read"), True),
    (httpx.ReadError("reset"), True),
    (httpx.RemoteProtocolError("closed mid-body"), True),
    (httpx.PoolTimeout("pool"), True),
    (httpx.UnsupportedProtocol("ftp"), False),
    (httpx.LocalProtocolError("ours"), False),
    (_httpx_status(429), True),
    (_httpx_status(502), True),
    (_httpx_status(503), True),
    (_httpx_status(404), False),
    (_httpx_status(401), False),
    # the standard library
    (ConnectionResetError("reset"), True),
    (ConnectionRefusedError("refused"), True),
    (BrokenPipeError("pipe"), True),
    (TimeoutError("t"), True),
    (ValueError("v"), False),
    (KeyError("k"), False),
    (RuntimeError("r"), False),
    # ours: a wait that ran out is a verdict, not a transient error
    (ReadyTimeout("revision x not Ready after 600 s"), False),
    (BuildTimeout("build b still WORKING after 3600s"), False),
    (RevisionFailed("r", "Container failed to start"), False),
    (PermanentError("p"), False),
    (TransientError("t"), True),
    (QuotaDenied("europe-west1", GPU_QUOTA), False),
    (DeployFailed("europe-west1", "r", "m"), False),
    (ConfigurationError("c"), False),
    (BuildFailedError("b"), False),
]


@pytest.mark.parametrize(
    ("exc", "transient"), TABLE, ids=[f"{type(e).__name__}-{i}" for i, (e, _) in enumerate(TABLE)]
)
def test_classification_table(exc, transient):
    assert is_transient(exc) is transient


def test_every_google_api_call_error_class_is_classified_by_its_code():
    """No google-api-core error class is left to chance: 5xx but 501, 429, and the gRPC
    UNAVAILABLE/DEADLINE_EXCEEDED/UNKNOWN/INTERNAL kinds are transient; every other is not."""
    transient_grpc = {
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "UNKNOWN",
        "INTERNAL",
        "RESOURCE_EXHAUSTED",
        "ABORTED",  # a concurrent change (AIP-154: a stale etag is refused with ABORTED)
    }
    seen = 0
    for _, cls in inspect.getmembers(gexc, inspect.isclass):
        if not issubclass(cls, gexc.GoogleAPICallError) or cls in (
            gexc.GoogleAPICallError,
            gexc.ClientError,
            gexc.ServerError,
            gexc.RetryError,
        ):
            continue
        code = getattr(cls, "code", None)
        grpc = getattr(getattr(cls, "grpc_status_code", None), "name", "")
        expected = code in (429, 500, 502, 503, 504) or grpc in transient_grpc
        assert is_transient(cls("m")) is expected, (cls.__name__, code, grpc)
        seen += 1
    assert seen >= 25


def test_reason_decides_before_the_text():
    # A rate limit whose text reads like an allocation quota: the ErrorInfo wins.
    rate = _google(gexc.TooManyRequests, GPU_QUOTA, RATE_INFO)
    assert quota_kind(rate) == "rate" and is_transient(rate)
    # An allocation quota whose text says nothing about quota.
    quota = _google(gexc.TooManyRequests, "Resource has been exhausted", QUOTA_INFO)
    assert quota_kind(quota) == "quota" and not is_transient(quota)
    assert isinstance(classify(quota, "europe-west1", "r"), QuotaDenied)
    # Text only (what a revision's Ready condition carries).
    assert is_quota_error("You do not have quota for using GPUs without zonal redundancy.")
    assert quota_kind("Quota exceeded for quota metric 'Read requests' per minute") == "rate"
    assert quota_kind("Container failed to start") is None


def test_a_server_error_is_transient_whatever_its_text_says():
    """A 503 whose text reads "quota exceeded" is the server's trouble: retried, not a quota
    refusal that sends the release to the next region (before: QuotaDenied)."""
    for exc in (
        gexc.ServiceUnavailable("Quota exceeded for total allowable count of GPUs"),
        _rest(503, "UNAVAILABLE", "quota exceeded"),
        gexc.BadGateway("quota exceeded"),
    ):
        assert quota_kind(exc) is None and is_transient(exc), exc
        assert classify(exc, "europe-west1", "r") is exc  # for the step's retry
    # The text of a revision's Ready condition still decides (no status there).
    assert is_quota_error(GPU_QUOTA)


def test_google_older_quota_refusal_moves_to_the_next_region():
    """Google's refusal 7: "maxScale may not exceed N" (a 400 INVALID_ARGUMENT with no
    ErrorInfo) is the region's CPU / memory allocation, not the template's fault."""
    for text in (MAX_SCALE, MAX_INSTANCES):
        refused = _rest(400, "INVALID_ARGUMENT", text)
        assert isinstance(refused, gexc.BadRequest)
        assert quota_kind(refused) == "quota" and not is_transient(refused)
        verdict = classify(refused, "europe-west1", "r")
        assert isinstance(verdict, QuotaDenied), verdict
        assert "maxScale may not exceed 10" in verdict.message or "Max instances" in text
    assert type(classify(gexc.InvalidArgument("bad memory"), "x", "r")) is ConfigurationError


def test_etag_conflicts_and_request_timeouts_are_retried():
    """408 and ABORTED (a stale etag, over REST a 409 whose body says ABORTED) are retried; a
    409 ALREADY_EXISTS is not (before: neither 408 nor ABORTED was)."""
    assert is_transient(_rest(409, "ABORTED", "etag mismatch"))
    assert not is_transient(_rest(409, "ALREADY_EXISTS", "exists"))
    assert is_transient(_rest(408, "", "Request Timeout"))
    aborted = _rest(409, "ABORTED", "etag mismatch")
    assert classify(aborted, "europe-west1", "r") is aborted


INTERRUPTS = [
    KeyboardInterrupt(),
    SystemExit(1),
    asyncio.CancelledError(),
    TerminationSignal(15),  # what Prefect raises in a flow run that gets SIGTERM
]


@pytest.mark.parametrize("interrupt", INTERRUPTS, ids=lambda e: type(e).__name__)
def test_interrupts_are_never_classified(interrupt):
    """An interrupt is no verdict on a deploy: classify hands it back untouched (before:
    ConfigurationError "Cloud Run refused the deploy in europe-west1:  | cause: ...")."""
    assert classify(interrupt, "europe-west1", "r") is interrupt
    assert not is_transient(interrupt)

    class State:
        data = interrupt

    assert retry_condition_fn(None, None, State()) is False


def test_a_ready_timeout_is_a_failed_deploy_not_a_retry():
    assert isinstance(classify(ReadyTimeout("not Ready"), "us-central1", "r"), DeployFailed)
    assert isinstance(ReadyTimeout("x"), TimeoutError)  # still catchable as a timeout


def test_a_container_that_cannot_start_is_the_images_fault_not_the_regions():
    """Condition.RevisionReason / CommonReason names (google-cloud-run's run_v2 enums) decide;
    Google's startup text is the fallback of an operation error that carries only the text."""
    assert ImageFault.__mro__[1] is DeployFailed  # still a failed deploy for every caller
    by_reason = RevisionFailed("r", "Revision failed.", "HEALTH_CHECK_CONTAINER_ERROR")
    assert isinstance(classify(by_reason, "europe-west1", "r"), ImageFault)
    missing = RevisionFailed("r", "Image not found.", "CONTAINER_MISSING REVISION_FAILED")
    assert isinstance(classify(missing, "europe-west1", "r"), ImageFault)
    text = gexc.FailedPrecondition(
        "Revision 'r' is not ready and cannot serve traffic. The user-provided container "
        "failed to start and listen on the port defined provided by the PORT=8080 environment "
        "variable within the allocated timeout."
    )
    assert isinstance(classify(text, "europe-west1", "r"), ImageFault)
    read = gexc.FailedPrecondition("Revision 'r' is not ready and cannot serve traffic.")
    assert isinstance(
        classify(read, "europe-west1", "r", {"HEALTH_CHECK_CONTAINER_ERROR"}), ImageFault
    )
    # A quota refusal told on the revision stays a quota refusal: the next region may have it.
    quota = RevisionFailed("r", GPU_QUOTA, "REVISION_FAILED")
    assert isinstance(classify(quota, "europe-west1", "r"), QuotaDenied)
    # Secrets, a timeout: failed deploys, not verdicts on the image.
    secret = RevisionFailed("r", "Secret was not found", "SECRETS_ACCESS_CHECK_FAILED")
    assert type(classify(secret, "europe-west1", "r")) is DeployFailed
    assert type(classify(ReadyTimeout("not Ready"), "europe-west1", "r")) is DeployFailed


def test_transport_errors_during_a_deploy_are_retried_not_refusals():
    exc = requests.exceptions.ConnectionError("Connection aborted.")
    assert classify(exc, "us-central1", "r") is exc  # returned as is: the step retries it


# ---------------------------------------------------------------- over HTTP, official clients


def _services_client(cloud):
    return cloud.services_client()


@pytest.mark.parametrize("fault", [429, 502, 504, "reset"])
def test_injected_faults_reach_the_client_as_transient(cloud, sandbox_admin, fault):
    from sandbox.scenario import Scenario

    scenario = Scenario().model_dump()
    scenario["apis"]["run"] = {"first_n": 1, "error_codes": [fault]}
    sandbox_admin.reset(scenario_data=scenario)
    client = _services_client(cloud)
    name = f"projects/{cloud.resolved_project()}/locations/europe-west1/services/nothing"
    with pytest.raises(Exception) as first:
        client.get_service(name=name, retry=None)
    assert is_transient(first.value), repr(first.value)
    if fault == 429:
        assert error_reason(first.value) == "RATE_LIMIT_EXCEEDED"
    with pytest.raises(gexc.NotFound) as second:  # the burst is over: a real answer
        client.get_service(name=name, retry=None)
    assert not is_transient(second.value)


@pytest.mark.parametrize("where", ["api", "operation"])
def test_quota_refusal_carries_google_error_info(cloud, sandbox_admin, where):
    """A deploy over GPU quota: the ErrorInfo's reason, not the message, says "quota"."""
    from google.cloud import run_v2

    from sandbox.scenario import Scenario
    from shipyard.tasks import cloud_run as cr

    scenario = Scenario().model_dump()
    scenario["default_region"]["deploy_error"] = {
        "message": "The request could not be fulfilled.",  # no quota phrase at all
        "where": where,
    }
    sandbox_admin.reset(scenario_data=scenario)
    project = cloud.resolved_project()
    template = run_v2.RevisionTemplate(
        containers=[
            run_v2.Container(
                image="registry.sandbox.local/x:1",
                resources=run_v2.ResourceRequirements(
                    limits={"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
                ),
            )
        ],
        node_selector=run_v2.NodeSelector(accelerator="nvidia-l4"),
        gpu_zonal_redundancy_disabled=True,
    )
    with pytest.raises(gexc.GoogleAPICallError) as err:
        cr.create_service(
            cloud.services_client(),
            project,
            "europe-west1",
            run_v2.Service(template=template),
            "quota-info",
            timeout=10,
        )
    assert error_reason(err.value) == "RESOURCE_QUOTA_EXCEEDED"
    assert is_quota_error(err.value) and not is_transient(err.value)
    assert isinstance(classify(err.value, "europe-west1", "r"), QuotaDenied)
