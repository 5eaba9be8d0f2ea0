"""One HTTP probe of an inference endpoint with a real image: status, headers, latency, image check.

Thin and typed over httpx and Pillow; it knows nothing of canaries or releases. The caller
passes the URL, the image, the headers (the auth token among them: it is sent, never
returned, logged or put into an exception message) and decides what the figures mean.
"""

from __future__ import annotations

import io
import mimetypes
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError

__all__ = ["ProbeResult", "SampleImage", "health", "load_sample", "probe"]

# Headers worth keeping from an answer (never the request's own headers).
KEPT_HEADERS = ("x-fallback-used", "x-remote-elapsed-ms", "x-revision", "content-type")


@dataclass(frozen=True)
class SampleImage:
    data: bytes
    content_type: str
    size: tuple[int, int]
    name: str


def load_sample(path: Path, content_type: str | None = None) -> SampleImage:
    """Read and decode the sample once (a bad sample is a configuration error, said plainly)."""
    if not path.exists():
        raise FileNotFoundError(
            f"canary sample_image={str(path)!r} does not exist: point CanaryPolicy.sample_image "
            "at a real page image on the worker, or leave it empty for the page Shipyard ships"
        )
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(
            f"canary sample_image={str(path)!r} is not an image Pillow can read ({exc}): "
            "use a PNG or JPEG page"
        ) from None
    kind = content_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return SampleImage(data=data, content_type=kind, size=size, name=path.name)


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
) -> ProbeResult:
    """Send the sample once; measure wall time to the last byte.

    Connection-level failures are returned as `error` (not raised) with the exception type
    only: httpx messages can echo the request, and the request carries the token.
    """
    sent = {"content-type": sample.content_type, **(headers or {})}
    started = time.perf_counter()
    try:
        response = client.request(method, url, content=sample.data, headers=sent, timeout=timeout)
    except httpx.HTTPError as exc:
        return ProbeResult(
            url=url,
            status=None,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            error=f"{type(exc).__name__} calling {url}",
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
