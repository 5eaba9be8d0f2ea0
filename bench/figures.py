"""How every bench prints its figures: one JSON object with `--json` (what `make bench` and CI
read), otherwise one aligned `key  value` line per figure for a person at a terminal."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any


def print_figures(
    figures: Mapping[str, Any], as_json: bool, *, keys: Iterable[str] | None = None
) -> None:
    """Print `figures` as one JSON line, or as `key  value` lines (only `keys`, in that order,
    when given: a bench whose figures hold a long per-case list shows its rows itself)."""
    if as_json:
        print(json.dumps(figures))
        return
    shown = list(figures if keys is None else keys)
    width = max((len(key) for key in shown), default=0)
    for key in shown:
        print(f"{key:{width}s}  {figures[key]}")
