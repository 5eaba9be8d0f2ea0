"""How a canary revision is judged before it gets any traffic: the `CanaryPolicy` block.

Default: 3 runs of a real page with `X-Internal-Token`, HTTP 200, `x-fallback-used: 0`, at least
30% faster than the CPU baseline.

The request speaks the service's own protocol (`body`: the sample as the raw body, as a file of
a multipart form, or inside a JSON document, base64-encoded; `headers`), and the answer is judged
by the checks the policy asks for (status, content type, JSON fields equal / matching, a text
pattern, an image like the input, headers, latency and speed-up). `samples` lists several
samples, each with its own expected answer, read from the released commit (`repo:PATH`), from
the worker (a path) or from the block itself (`data_base64`). Policies saved before these fields
existed load with the defaults, which are today's behaviour: one raw image, image back.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect.blocks.core import Block
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shipyard.blocks.schema_cache import CachedSchema

# The canary's default sample page ships inside the package (package data), so an installed
# worker has it; nothing is read from a checkout at run time.
PACKAGED_SAMPLE_IMAGE = Path(__file__).resolve().parent / "samples" / "page.png"
LEGACY_SAMPLE_IMAGE = "examples/sample-pages/page.png"  # what older saved policies hold
DEFAULT_TOKEN_SECRET = "shipyard-internal-token"  # noqa: S105 - a block *name*, not a secret
REPO_PREFIX = "repo:"  # a sample path read from the commit being released

__all__ = [
    "DEFAULT_TOKEN_SECRET",
    "LEGACY_SAMPLE_IMAGE",
    "PACKAGED_SAMPLE_IMAGE",
    "REPO_PREFIX",
    "CanaryPolicy",
    "CanarySample",
    "JsonBody",
    "MultipartBody",
    "RawBody",
    "RequestBody",
]


# ---------------------------------------------------------------- the request's body


class RawBody(BaseModel):
    """The sample's bytes are the request body (today's page service: an image POST)."""

    model_config = ConfigDict(extra="forbid", title="Raw body")

    kind: Literal["raw"] = Field(
        default="raw", title="Kind", description="raw: the sample file is the request body"
    )


class MultipartBody(BaseModel):
    """The sample is one file of a multipart/form-data form (e.g. Flask's `request.files`)."""

    model_config = ConfigDict(extra="forbid", title="Multipart form")

    kind: Literal["multipart"] = Field(
        default="multipart",
        title="Kind",
        description="multipart: the sample is a file field of a multipart/form-data form",
    )
    field: str = Field(
        default="file",
        min_length=1,
        title="File field name",
        description="Form field that carries the sample file (e.g. image for "
        "request.files['image'])",
    )
    filename: str | None = Field(
        default=None,
        title="File name",
        description="File name sent with the part; empty: the sample's own file name",
    )
    fields: dict[str, str] = Field(
        default={},
        title="Other form fields",
        description="Plain text fields sent beside the file (name -> value)",
    )


class JsonBody(BaseModel):
    """A JSON document: the sample base64-encoded at `base64_field`, or the sample file itself."""

    model_config = ConfigDict(extra="forbid", title="JSON document")

    kind: Literal["json"] = Field(
        default="json",
        title="Kind",
        description="json: a JSON request (application/json)",
    )
    base64_field: str | None = Field(
        default="image",
        title="Base64 field",
        description="Dotted path in the document where the sample's bytes go, base64-encoded "
        "(e.g. image, or inputs.0.data); empty: the sample file is itself the JSON document "
        "and is sent as it is",
    )
    fields: dict[str, Any] = Field(
        default={},
        title="Other JSON members",
        description="Members of the document besides the sample (name -> JSON value)",
    )


RequestBody = Annotated[RawBody | MultipartBody | JsonBody, Field(discriminator="kind")]


def _patterns_compile(where: str, patterns: dict[str, str] | str | None) -> None:
    """A bad regular expression is refused when the policy is made, naming field and fix."""
    items = patterns.items() if isinstance(patterns, dict) else [("", patterns)]
    for key, pattern in items:
        if pattern is None:
            continue
        try:
            re.compile(pattern)
        except re.error as exc:
            field = f"{where}[{key!r}]" if key else where
            raise ValueError(
                f"{field}={pattern!r} is not a regular expression ({exc}); escape special "
                r"characters (e.g. \. for a dot) or use json_equals for an exact value"
            ) from None


# ---------------------------------------------------------------- samples


class CanarySample(BaseModel):
    """One sample sent to the canary, with what its answer must be (unset: the policy's)."""

    model_config = ConfigDict(extra="forbid", title="Canary sample")

    name: str | None = Field(
        default=None,
        title="Name",
        description="How messages name this sample; empty: its file name",
    )
    path: str | None = Field(
        default=None,
        title="Path",
        description="repo:PATH reads PATH from the commit being released (the build's git "
        "source, e.g. repo:tests/samples/seven.png); any other path is a file on the worker",
    )
    data_base64: str | None = Field(
        default=None,
        title="Inline data (base64)",
        description="The sample's bytes stored in this block, base64-encoded (for small "
        "samples); give this or path, not both",
    )
    content_type: str | None = Field(
        default=None,
        title="Content type",
        description="The sample's media type (e.g. image/png); empty: from the file name, "
        "else the policy's content type",
    )
    expected_status: int | None = Field(
        default=None,
        ge=100,
        le=599,
        title="Expected status",
        description="HTTP status this sample must get; empty: the policy's",
    )
    expected_content_type: str | None = Field(
        default=None,
        title="Expected content type",
        description="Media type the answer must have (e.g. application/json); empty: the policy's",
    )
    json_equals: dict[str, Any] = Field(
        default={},
        title="JSON fields equal",
        description="Dotted path in the JSON answer -> the value it must equal (e.g. "
        "digit -> 7); added to (and overriding) the policy's",
    )
    json_matches: dict[str, str] = Field(
        default={},
        title="JSON fields match",
        description="Dotted path in the JSON answer -> a regular expression its text must "
        "match (re.search); added to (and overriding) the policy's",
    )
    text_pattern: str | None = Field(
        default=None,
        title="Text pattern",
        description="Regular expression the answer's text must contain; empty: the policy's",
    )
    check_image: bool | None = Field(
        default=None,
        title="Image like the input",
        description="The answer must be an image of the sample's size; empty: the policy's",
    )

    @field_validator("data_base64")
    @classmethod
    def _is_base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(
                    "data_base64 is not base64; encode the file (base64 -w0 FILE) or give "
                    "path instead"
                ) from None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> CanarySample:
        _patterns_compile("json_matches", self.json_matches)
        _patterns_compile("text_pattern", self.text_pattern)
        if (self.path is None) == (self.data_base64 is None):
            raise ValueError(
                f"a canary sample needs exactly one of path or data_base64 (path={self.path!r}, "
                f"data_base64 {'set' if self.data_base64 else 'empty'}): give "
                "path='repo:tests/samples/seven.png' (from the released commit), a path on "
                "the worker, or the bytes base64-encoded"
            )
        return self

    @property
    def in_repository(self) -> bool:
        return self.path is not None and self.path.startswith(REPO_PREFIX)

    def label(self) -> str:
        if self.name:
            return self.name
        if self.path:
            return Path(self.path.removeprefix(REPO_PREFIX)).name
        return "inline sample"


# ---------------------------------------------------------------- the policy


class CanaryPolicy(CachedSchema, Block):
    """How a canary revision is judged before it gets any traffic."""

    _block_type_name = "Shipyard Canary Policy"
    _block_type_slug = "shipyard-canary-policy"
    _description = (
        "Smoke test of a canary revision in the service's own protocol (raw body, multipart "
        "form or JSON), with real samples and their expected answers: status, content type, "
        "JSON fields, text, image, headers, speed-up over the CPU baseline, and the revision's "
        "logs, before it gets any traffic."
    )

    # -- what is sent
    sample_image: str | None = Field(
        default=None,
        title="Sample file",
        description="Path of the sample on the worker (relative: from the working directory), "
        "used when samples is empty; empty: the scanned printed page shipped with Shipyard",
    )
    samples: list[CanarySample] = Field(
        default=[],
        title="Samples",
        description="Several samples, each with its own expected answer; each is sent runs "
        "times. Empty: the one sample file above with the policy's checks",
    )
    health_path: str | None = Field(
        default="/health",
        title="Health path",
        description="GET first (verifies /health after the deploy; also starts the instance); "
        "empty: no health check",
    )
    method: Literal["POST", "PUT", "PATCH"] = Field(
        default="POST", title="Method", description="HTTP method of the request"
    )
    path: str = Field(
        default="/internal/translate/page",
        title="Path",
        description="Path of the request on the canary's URL (e.g. /guess)",
    )
    body: RequestBody = Field(
        default=RawBody(),
        title="Body",
        description="How the sample is sent: raw (the file is the body), multipart (a file "
        "field of a form) or json (base64 inside a JSON document, or the JSON file itself)",
    )
    content_type: str | None = Field(
        default=None,
        title="Sample content type",
        description="Media type of the sample file (the raw body's Content-Type, or the "
        "multipart part's); default: from the file suffix",
    )
    headers: dict[str, str] = Field(
        default={},
        title="Extra headers",
        description="Other request headers (name -> value), stored in plain text: a secret "
        "goes in token_secret, never here",
    )
    auth_header: str = Field(
        default="X-Internal-Token",
        title="Token header",
        description="Header that carries the internal token",
    )
    token_secret: str | None = Field(
        default=DEFAULT_TOKEN_SECRET,
        title="Token secret block",
        description="Name of the Prefect Secret block holding the internal token (None: no header)",
    )
    runs: int = Field(
        default=3,
        ge=1,
        le=50,
        title="Runs",
        description="How many times each sample is sent",
    )
    # -- what the answer must be
    expected_status: int = Field(
        default=200, ge=100, le=599, title="Expected status", description="HTTP status expected"
    )
    expected_content_type: str | None = Field(
        default=None,
        title="Expected content type",
        description="Media type the answer must have (e.g. application/json; parameters such "
        "as charset are ignored); empty: not checked",
    )
    json_equals: dict[str, Any] = Field(
        default={},
        title="JSON fields equal",
        description="Dotted path in the JSON answer -> the value it must equal (e.g. digit -> "
        "7, or result.label -> cat); empty: not checked",
    )
    json_matches: dict[str, str] = Field(
        default={},
        title="JSON fields match",
        description="Dotted path in the JSON answer -> a regular expression its text must "
        "match (re.search); empty: not checked",
    )
    text_pattern: str | None = Field(
        default=None,
        title="Text pattern",
        description="Regular expression the answer's text must contain (re.search); empty: "
        "not checked",
    )
    check_image: bool | None = Field(
        default=None,
        title="Image like the input",
        description="The answer must decode as an image of the input's size; empty: yes, "
        "unless the policy checks JSON fields, a text pattern or a non-image content type",
    )
    required_headers: dict[str, str] = Field(
        default={"x-fallback-used": "0"},
        title="Required answer headers",
        description="headers the answer must carry, exactly",
    )
    p95_limit_ms: float | None = Field(
        default=90_000,
        gt=0,
        title="p95 limit (ms)",
        description="single-request p95 limit (default 90 s); empty: not checked",
    )
    min_speedup: float | None = Field(
        default=0.30,
        ge=0,
        lt=1,
        title="Minimum speed-up",
        description="1 - canary median / CPU baseline must reach this (default: >= 30%), "
        "measured with the first sample; None: not checked (and no CPU baseline is measured)",
    )
    baseline_max_age_days: float = Field(
        default=30.0,
        gt=0,
        title="Baseline max age (days)",
        description="re-measure the recorded CPU baseline when it is older than this (it is "
        "also re-measured whenever the CPU template changes)",
    )
    log_signatures: list[str] = Field(
        default=[
            "Failed to create CUDAExecutionProvider",
            "undefined symbol",
            # Cloud Run's OOM lines: "Memory limit of 16384 MiB exceeded with 16420 MiB used.
            # Consider increasing the memory limit, ..." then "Container terminated on signal
            # 9." (dart-lang/pub-dev#9554, SkyTruth/cerulean-cloud#90)
            "Memory limit of",
            "Container terminated on signal 9",
            "UnicodeEncodeError",
        ],
        title="Log signatures",
        description="a canary whose revision logs contain one of these fails",
    )
    error_log_lines: int = Field(
        default=3,
        ge=0,
        le=20,
        title="Error lines cited",
        description="A failed canary cites this many first ERROR lines of the revision's own "
        "logs (Cloud Logging) in its reasons; 0: none",
    )
    log_settle_s: float = Field(
        default=10.0,
        ge=0,
        title="Log settle time (s)",
        description="wait for log ingestion before reading the canary window",
    )
    request_timeout_s: float = Field(
        default=900.0, gt=0, title="Request timeout (s)", description="deadline of one request"
    )
    retry_statuses: list[int] = Field(
        default=[429, 502, 503, 504],
        title="Retried statuses",
        description="answers retried as transient (a 500 is the app failing: not retried)",
    )
    retries: int = Field(
        default=3, ge=0, le=20, title="Retries", description="retries of a transient answer"
    )
    retry_delay_s: float = Field(
        default=1.0,
        ge=0,
        title="Retry delay (s)",
        description="first delay between retries (doubles each time)",
    )

    @model_validator(mode="after")
    def _patterns(self) -> CanaryPolicy:
        _patterns_compile("json_matches", self.json_matches)
        _patterns_compile("text_pattern", self.text_pattern)
        return self

    def sample_path(self) -> Path:
        if not self.sample_image or self.sample_image == LEGACY_SAMPLE_IMAGE:
            return PACKAGED_SAMPLE_IMAGE
        return Path(self.sample_image).absolute()

    def the_samples(self) -> list[CanarySample]:
        """The samples to send: `samples`, else the one `sample_image` with the policy's checks."""
        if self.samples:
            return list(self.samples)
        if self.sample_image and self.sample_image.startswith(REPO_PREFIX):
            return [CanarySample(path=self.sample_image, content_type=self.content_type)]
        return [CanarySample(path=str(self.sample_path()), content_type=self.content_type)]
