"""`shipyard init --sample FILE --path /predict [--form image]`: one example request, as the
fields of the canary policy (blocks/canary_policy.py) that differ from its defaults.

The sample's bytes go into the policy itself (`samples[0].data_base64`), so every worker has
them whatever its working directory or checkout; a sample above `MAX_SAMPLE_BYTES` is refused
with the fix (a smaller one). A team's own service answers its own way: the page service's
checks (an image back, `x-fallback-used: 0`, a speed-up over a CPU baseline) and its `GET
/health` first are turned off (`--health-path` sets the service's own); what is checked is the
status (`--expect-status`, default 200) and, when given, the answer's media type and JSON fields
(`--expect-json digit=7`: a dotted path, and a JSON value or else a string).
"""

from __future__ import annotations

import base64
import json
import mimetypes
from pathlib import Path
from typing import Any

MAX_SAMPLE_BYTES = 2_000_000


def canary_fields(
    sample: Path | None,
    path: str | None,
    form: str | None,
    expect_status: int = 200,
    expect_content_type: str | None = None,
    expect_json: list[str] | None = None,
    health_path: str | None = None,
) -> dict[str, Any]:
    """The CanaryPolicy fields for one example request (JSON values, ready for the block)."""
    from shipyard.deployments.cli.errors import UsageError

    if sample is None:
        raise UsageError(
            "--path/--form describe how the canary sends a sample: give the sample too, "
            "--sample FILE (an example request body, e.g. tests/samples/seven.png)"
        )
    if not path or not path.startswith("/"):
        raise UsageError(
            f"--path {path!r}: give where the canary sends --sample, starting with '/', e.g. "
            "--path /predict"
        )
    data = sample.read_bytes()
    if len(data) > MAX_SAMPLE_BYTES:
        raise UsageError(
            f"--sample {sample}: {len(data)} bytes, above {MAX_SAMPLE_BYTES} (it is stored in the "
            "canary policy): give a smaller example request"
        )
    content_type = mimetypes.guess_type(sample.name)[0]
    body: dict[str, Any] = (
        {"kind": "multipart", "field": form, "filename": None, "fields": {}}
        if form
        else {"kind": "raw"}
    )
    fields: dict[str, Any] = {
        "path": path,
        "body": body,
        "samples": [
            {
                "name": sample.name,
                "data_base64": base64.b64encode(data).decode(),
                "content_type": content_type,
            }
        ],
        "expected_status": expect_status,
        "check_image": False,
        "required_headers": {},
        "min_speedup": None,
    }
    if expect_content_type:
        fields["expected_content_type"] = expect_content_type
    # A team's service has its own health path, or none: the page service's /health would 404.
    fields["health_path"] = health_path
    if health_path is not None and not health_path.startswith("/"):
        raise UsageError(f"--health-path {health_path!r}: give a path starting with '/'")
    if expect_json:
        fields["json_equals"] = json_expectations(expect_json)
    return fields


def json_expectations(items: list[str]) -> dict[str, Any]:
    """`--expect-json FIELD=VALUE` (repeatable) as CanaryPolicy.json_equals: VALUE read as JSON
    (`digit=7` -> 7, `ok=true` -> True, `label="7"` -> "7"), else taken as a string."""
    from shipyard.deployments.cli.errors import UsageError

    out: dict[str, Any] = {}
    for item in items:
        field, sep, text = item.partition("=")
        if not sep or not field.strip():
            raise UsageError(
                f"--expect-json {item!r}: give FIELD=VALUE, the answer's JSON field (a dotted "
                "path) and the value it must hold, e.g. --expect-json digit=7"
            )
        try:
            out[field.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[field.strip()] = text
    return out


def describe(fields: dict[str, Any]) -> str:
    """One line for init's report (never the sample's bytes)."""
    body = fields["body"]
    how = f"multipart field {body['field']}" if body["kind"] == "multipart" else "raw body"
    sample = fields["samples"][0]
    size = len(base64.b64decode(sample["data_base64"]))
    return (
        f"POST {fields['path']} with {sample['name']} ({size} B, {how}), expect "
        f"{fields['expected_status']}"
        + (f" {fields['expected_content_type']}" if "expected_content_type" in fields else "")
        + "".join(f", {k} = {json.dumps(v)}" for k, v in fields.get("json_equals", {}).items())
    )
