"""What a canary's answer must be, and what a failed check says.

`Expectation` is one sample's expected answer: the policy's checks with the sample's own laid
over them. `answer_problems` judges one probe against it (status, required headers, content
type, JSON fields equal / matching, a text pattern, an image like the input). `exchange`
says what was sent (method, path, content type, size) and what came back (status, content
type, size, the first bytes) for the failure message; the token never appears in it, even when
a service echoes it back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from shipyard.blocks.canary_policy import CanaryPolicy, CanarySample
from shipyard.tasks.canary_probe import ProbeResult, RequestShape, SampleImage

FIRST_BYTES = 120
_MISSING = object()


@dataclass(frozen=True)
class Expectation:
    status: int
    content_type: str | None
    json_equals: dict[str, Any]
    json_matches: dict[str, str]
    text_pattern: str | None
    image: bool
    headers: dict[str, str]


def _media(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


def wants_image(
    check_image: bool | None,
    json_equals: dict[str, Any],
    json_matches: dict[str, str],
    text_pattern: str | None,
    content_type: str | None,
) -> bool:
    """`check_image`, or when unset: yes unless the answer is judged as JSON, text or another
    non-image content type."""
    if check_image is not None:
        return check_image
    if json_equals or json_matches or text_pattern:
        return False
    return not content_type or _media(content_type).startswith("image/")


def expectation(policy: CanaryPolicy, sample: CanarySample | None = None) -> Expectation:
    """The expected answer of `sample` (None: the policy's own)."""
    s = sample or CanarySample(data_base64="")
    json_equals = {**policy.json_equals, **s.json_equals}
    json_matches = {**policy.json_matches, **s.json_matches}
    text_pattern = s.text_pattern if s.text_pattern is not None else policy.text_pattern
    content_type = s.expected_content_type or policy.expected_content_type
    check = s.check_image if s.check_image is not None else policy.check_image
    return Expectation(
        status=s.expected_status or policy.expected_status,
        content_type=content_type,
        json_equals=json_equals,
        json_matches=json_matches,
        text_pattern=text_pattern,
        image=wants_image(check, json_equals, json_matches, text_pattern, content_type),
        headers=dict(policy.required_headers),
    )


def request_shape(policy: CanaryPolicy) -> RequestShape:
    body = policy.body
    if body.kind == "multipart":
        return RequestShape(
            kind="multipart",
            file_field=body.field,
            filename=body.filename,
            form_fields=dict(body.fields),
        )
    if body.kind == "json":
        return RequestShape(
            kind="json", base64_field=body.base64_field, json_fields=dict(body.fields)
        )
    return RequestShape()


# ---------------------------------------------------------------- JSON


def json_at(document: Any, dotted: str) -> Any:
    """The value at a dotted path (`result.label`, `items.0.id`); `_MISSING` when absent."""
    node = document
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif (
            isinstance(node, list)
            and part.lstrip("-").isdigit()
            and -len(node) <= int(part) < len(node)
        ):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def same_json(got: Any, want: Any) -> bool:
    """JSON equality: 7 == 7.0, but true is not 1 and "7" is not 7."""
    numbers = (int, float)
    if isinstance(got, bool) or isinstance(want, bool):
        return isinstance(got, bool) and isinstance(want, bool) and got == want
    if isinstance(got, numbers) and isinstance(want, numbers):
        return float(got) == float(want)
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(same_json(got[k], want[k]) for k in got)
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(
            same_json(a, b) for a, b in zip(got, want, strict=True)
        )
    return type(got) is type(want) and got == want


def _json_problems(expect: Expectation, body: bytes) -> list[str]:
    if not (expect.json_equals or expect.json_matches):
        return []
    try:
        document = json.loads(body)
    except ValueError:
        return ["the answer is not JSON"]
    out = []
    for path, want in expect.json_equals.items():
        got = json_at(document, path)
        if got is _MISSING:
            out.append(f"JSON {path} missing, expected {_show(want)}")
        elif not same_json(got, want):
            out.append(f"JSON {path} = {_show(got)}, expected {_show(want)}")
    for path, pattern in expect.json_matches.items():
        got = json_at(document, path)
        text = got if isinstance(got, str) else json.dumps(got, default=str)
        if got is _MISSING:
            out.append(f"JSON {path} missing, expected to match /{pattern}/")
        elif not re.search(pattern, text):
            out.append(f"JSON {path} = {_show(got)} does not match /{pattern}/")
    return out


# ---------------------------------------------------------------- one answer


def answer_problems(expect: Expectation, sample: SampleImage, result: ProbeResult) -> list[str]:
    """What is wrong with one answer (empty: it is what the sample expects)."""
    if result.status != expect.status:
        what = (
            f"status {result.status}"
            if result.status is not None
            else (result.error or "no answer")
        )
        return [f"{what}, expected {expect.status}"]
    out = []
    for header, want in expect.headers.items():
        got = result.headers.get(header.lower())
        if got != want:
            out.append(f"{header}: {got!r}, expected {want!r}")
    if expect.content_type and _media(result.content_type) != _media(expect.content_type):
        out.append(
            f"content type {_media(result.content_type) or 'none'!r}, expected "
            f"{_media(expect.content_type)!r}"
        )
    out += _json_problems(expect, result.body)
    if expect.text_pattern and not re.search(
        expect.text_pattern, result.body.decode("utf-8", errors="replace")
    ):
        out.append(f"the answer does not contain /{expect.text_pattern}/")
    if expect.image:
        out += _image_problems(sample, result)
    return out


def _image_problems(sample: SampleImage, result: ProbeResult) -> list[str]:
    want = f"{sample.size[0]}x{sample.size[1]}" if sample.size else "?"
    if result.image_size is None:
        return [f"response image {result.image_error or '?'} is not a {want} image like the input"]
    if result.image_size != sample.size:
        w, h = result.image_size
        return [f"response image {w}x{h} (size differs) is not a {want} image like the input"]
    return []


def image_column(sample: SampleImage, result: ProbeResult) -> str:
    """The runs table's `image` cell."""
    if result.image_size is not None:
        w, h = result.image_size
        return f"{w}x{h}" + ("" if result.image_size == sample.size else " (size differs)")
    return result.image_error or ""


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every secret replaced by [redacted]."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def first_bytes(body: bytes, secrets: tuple[str, ...] = ()) -> str:
    """The answer's first bytes for a message: text in backticks (newlines as \\n), binary as
    hex. A secret is redacted before the cut, so no part of one is shown either."""
    spare = max((len(s.encode()) for s in secrets), default=0)
    head = body[: FIRST_BYTES + spare]
    text = None
    for cut in range(4):  # the cut may fall inside a character of up to 4 bytes
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        text = redact(text, secrets)
        more = "..." if len(text) > FIRST_BYTES or len(body) > len(head) else ""
        text = text[:FIRST_BYTES]
        shown = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return "`" + shown.replace("\t", "\\t") + more + "`"
    return "0x" + body[:16].hex() + ("..." if len(body) > 16 else "")


def exchange(result: ProbeResult, secrets: tuple[str, ...] = ()) -> str:
    """'sent POST /guess multipart/form-data (...), 1234 B; got 200 application/json, 12 B: ...'"""
    sent = f"sent {result.sent.describe()}" if result.sent else "sent ?"
    if result.status is None:
        return f"{sent}; got no answer ({result.error or 'unreachable'})"
    got = (
        f"got {result.status} {_media(result.content_type) or 'no content type'}, {result.bytes} B"
    )
    if result.body:
        got += f": {first_bytes(result.body, secrets)}"
    return f"{sent}; {got}"
