"""Reports as Prefect artifacts: a markdown summary, a table (built with pandas).

Thin wrappers: callers pass rows and text; keys are made artifact-safe here (Prefect allows
lowercase letters, digits and dashes). Callers must not pass secrets: nothing is filtered.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, cast
from uuid import UUID

import pandas as pd
from prefect.artifacts import create_markdown_artifact, create_table_artifact

__all__ = ["artifact_key", "frame", "markdown_table", "publish_markdown", "publish_table"]


def artifact_key(*parts: str) -> str:
    key = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower())
    return re.sub(r"-{2,}", "-", key).strip("-")[:200]


def frame(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    if columns is not None:
        df = df.reindex(columns=list(columns))
    return df


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 1)
    return value


def publish_table(
    rows: Sequence[dict[str, Any]],
    key: str,
    description: str,
    columns: Sequence[str] | None = None,
) -> UUID:
    """A table artifact (list of records; NaN becomes empty)."""
    df = frame(rows, columns)
    records = [{k: _cell(v) for k, v in rec.items()} for rec in df.to_dict(orient="records")]
    artifact_id = create_table_artifact(
        table=records, key=artifact_key(key), description=description
    )
    return cast(UUID, artifact_id)  # sync-compatible: a UUID when called from sync code


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows as a GitHub-style markdown table (pandas' to_markdown needs tabulate; not used)."""
    df = frame(rows, columns)
    if df.empty:
        return "_(none)_"
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = [
        "| " + " | ".join("" if _cell(v) is None else str(_cell(v)) for v in rec) + " |"
        for rec in df.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body])


def publish_markdown(markdown: str, key: str, description: str) -> UUID:
    artifact_id = create_markdown_artifact(
        markdown=markdown, key=artifact_key(key), description=description
    )
    return cast(UUID, artifact_id)  # sync-compatible: a UUID when called from sync code
