"""What a build carries between steps (stage state, layers, cache entries) and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandbox.buildkit.dockerfile import Stage


class BuildFailed(Exception):
    """The build stopped; `step` names the BuildKit vertex (e.g. `[python-deps 2/3] RUN …`)."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}" if step else message)
        self.step = step
        self.message = message


@dataclass
class LayerRef:
    digest: str
    diff_id: str
    size: int
    repo: str | None = None  # where the blob already is (None: `data` holds it)
    data: bytes | None = None


@dataclass
class StageState:
    stage: Stage
    key: str
    config: dict[str, Any]
    layers: list[LayerRef]
    files: dict[str, tuple[bytes, int]]
    env: dict[str, str]
    history: list[dict[str, Any]]
    entries: list[tuple[str, LayerRef | None]] = field(default_factory=list)
    parent: StageState | None = None

    def chain(self) -> list[StageState]:
        out: list[StageState] = []
        node: StageState | None = self
        while node is not None:
            out.append(node)
            node = node.parent
        return list(reversed(out))


@dataclass
class CacheEntry:
    layer: LayerRef | None


@dataclass
class BuildOutput:
    digest: str | None
    images: list[dict[str, str]]
    steps: list[tuple[str, str]]  # (step name, CACHED|DONE)
    cache_exports: list[dict[str, str]]
    config: dict[str, Any]


@dataclass
class BuildPolicy:
    """Scenario knobs (sandbox/build_scenario.py): a forced failure and a per-step delay."""

    fail_step: str | None = None
    message: str = "forced failure"
    exit_code: int = 1
    step_delay_s: float = 0.0
