"""One HTTP probe of an inference endpoint with a real sample: status, headers, latency, body.

Thin and typed over httpx and Pillow; it knows nothing of canaries or releases. The caller
passes the URL, the sample, how to send it (`RequestShape`: the raw body, a file of a multipart
form, or a JSON document with the sample base64-encoded or the JSON file itself), the headers
(the auth token among them: it is sent, never returned, logged or put into an exception
message) and decides what the figures mean. The result says what was sent (`Sent`: method,
path, content type, size, never a header) and what came back (status, content type, the body's
first bytes, whether it decodes as an image).
"""

from __future__ import annotations

import base64
import builtins
import io
import json
import mimetypes
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ProbeResult",
    "RequestShape",
    "Sample",
    "SampleImage",
    "Sent",
    "encode_request",
    "health",
    "load_sample",
    "probe",
    "sample_from_bytes",
]

# Headers worth keeping from an answer (never the request's own headers).
KEPT_HEADERS = ("x-fallback-used", "x-remote-elapsed-ms", "x-revision", "content-type")
BODY_KEPT = 1 << 20  # bytes of an answer kept for the checks (JSON, text); the rest is counted


@dataclass(frozen=True)
class SampleImage:
    """A sample: its bytes, media type, name and, when it is an image, its size."""

    data: bytes
    content_type: str
    size: tuple[int, int] | None
    name: str


Sample = SampleImage


def _image_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError):
        return None


def sample_from_bytes(data: bytes, name: str, content_type: str | None = None) -> SampleImage:
    """A sample from its bytes; `size` is None when it is not an image Pillow reads."""
    kind = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return SampleImage(data=data, content_type=kind, size=_image_size(data), name=name)


def load_sample(
    path: Path, content_type: str | None = None, *, require_image: bool = True
) -> SampleImage:
    """Read (and, by default, decode as an image) a sample file; a bad sample is a
    configuration error, said plainly."""
    if not path.exists():
        raise FileNotFoundError(
            f"canary sample_image={str(path)!r} does not exist: point CanaryPolicy.sample_image "
            "at a real page image on the worker, or leave it empty for the page Shipyard ships"
        )
    sample = sample_from_bytes(path.read_bytes(), path.name, content_type)
    if require_image and sample.size is None:
        raise ValueError(
            f"canary sample_image={str(path)!r} is not an image Pillow can read: use a PNG or "
            "JPEG page"
        )
    return sample


# ---------------------------------------------------------------- the request


@dataclass(frozen=True)
class RequestShape:
    """How a sample is sent: `raw` (its bytes are the body), `multipart` (a file field named
    `file_field` of a form, with `form_fields` beside it) or `json` (a document of `json_fields`
    with the sample base64-encoded at the dotted `base64_field`; no `base64_field`: the sample
    is the JSON document)."""

    kind: Literal["raw", "multipart", "json"] = "raw"
    file_field: str = "file"
    filename: str | None = None
    form_fields: dict[str, str] = field(default_factory=dict)
    base64_field: str | None = "image"
    json_fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sent:
    """What a probe sent, for messages: never a header (the token is one)."""

    method: str
    path: str
    content_type: str
    size: int
    detail: str = ""  # e.g. "field image: seven.png image/png, 1234 B"

    def describe(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.method} {self.path} {self.content_type}{detail}, {self.size} B"


def _put(document: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = document
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list) and part.isdigit():
            index = int(part)
            while len(node) <= index:
                node.append({})
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise ValueError(f"base64_field={dotted!r}: {part!r} is inside a non-object member")
        if last:
            node[part] = value
        else:
            nxt = parts[i + 1]
            node = node.setdefault(part, [] if nxt.isdigit() else {})


def encode_request(sample: SampleImage, shape: RequestShape) -> tuple[bytes, str, str]:
    """(body, content type, detail for messages) of the sample sent in `shape`."""
    if shape.kind == "raw":
        return sample.data, sample.content_type, sample.name
    if shape.kind == "multipart":
        filename = shape.filename or sample.name
        files = {shape.file_field: (filename, sample.data, sample.content_type)}
        boundary = uuid.uuid4().hex
        request = httpx.Request(
            "POST",
            "http://multipart.invalid/",
            data=shape.form_fields or None,
            files=files,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        body = request.read()
        detail = f"field {shape.file_field}: {filename} {sample.content_type}, {len(sample.data)} B"
        return body, f"multipart/form-data; boundary={boundary}", detail
    if shape.base64_field is None:
        try:
            json.loads(sample.data)
        except ValueError as exc:
            raise ValueError(
                f"canary sample {sample.name!r} is sent as the JSON document (json body without "
                f"base64_field) but is not JSON ({exc}): give a JSON file, or set "
                "base64_field to embed it"
            ) from None
        return sample.data, "application/json", f"{sample.name} as the document"
    document: dict[str, Any] = json.loads(json.dumps(shape.json_fields))  # a deep copy
    _put(document, shape.base64_field, base64.b64encode(sample.data).decode("ascii"))
    detail = f"{sample.name} base64 at {shape.base64_field}"
    return json.dumps(document).encode(), "application/json", detail


# ---------------------------------------------------------------- the probe


@dataclass
class ProbeResult:
    url: str
    status: int | None
    elapsed_ms: float
    bytes: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    image_error: str | None = None
    error: str | None = None
    sent: Sent | None = None
    content_type: str = ""
    body: builtins.bytes = b""  # the answer's first BODY_KEPT bytes (`bytes` is the count)


def _decode(body: bytes) -> tuple[tuple[int, int] | None, str | None]:
    try:
        with Image.open(io.BytesIO(body)) as image:
            image.load()
            return image.size, None
    except (UnidentifiedImageError, OSError) as exc:
        return None, f"response is not an image: {type(exc).__name__}"


def probe(
    client: httpx.Client,
    url: str,
    sample: SampleImage,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    timeout: float = 900.0,
    decode_image: bool = True,
    keep_headers: list[str] | None = None,
    shape: RequestShape | None = None,
) -> ProbeResult:
    """Send the sample once (in `shape`, default: the raw body); measure wall time to the
    last byte.

    Connection-level failures are returned as `error` (not raised) with the exception type
    only: httpx messages can echo the request, and the request carries the token.
    """
    content, content_type, detail = encode_request(sample, shape or RequestShape())
    sent = Sent(method, httpx.URL(url).path, content_type.split(";")[0], len(content), detail)
    request_headers = {"content-type": content_type, **(headers or {})}
    started = time.perf_counter()
    try:
        response = client.request(
            method, url, content=content, headers=request_headers, timeout=timeout
        )
    except httpx.HTTPError as exc:
        return ProbeResult(
            url=url,
            status=None,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            error=f"{type(exc).__name__} calling {url}",
            sent=sent,
        )
    elapsed = (time.perf_counter() - started) * 1000
    result = ProbeResult(
        url=url,
        status=response.status_code,
        elapsed_ms=elapsed,
        bytes=len(response.content),
        headers={
            k: response.headers[k]
            for k in dict.fromkeys([*KEPT_HEADERS, *(keep_headers or [])])
            if k in response.headers
        },
        sent=sent,
        content_type=response.headers.get("content-type", ""),
        body=response.content[:BODY_KEPT],
    )
    if decode_image and response.status_code < 300:
        result.image_size, result.image_error = _decode(response.content)
    return result


def health(
    client: httpx.Client, url: str, headers: dict[str, str] | None = None, timeout: float = 60.0
) -> tuple[int | None, dict[str, Any]]:
    """GET a health URL -> (status, JSON body or {}); (None, {"error": type}) when unreachable."""
    try:
        response = client.get(url, headers=headers or {}, timeout=timeout)
    except httpx.HTTPError as exc:
        return None, {"error": type(exc).__name__}
    try:
        body = response.json()
    except ValueError:
        body = {}
    return response.status_code, body if isinstance(body, dict) else {}
