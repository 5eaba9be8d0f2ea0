"""The benches' timed release: a scenario staged with zero service latency, a fresh sandbox
target (its own service; no speed-up check: with zero latency GPU and CPU answer alike), and
`run_release` timed from the caller's side (Prefect server and sandbox start excluded)."""

from __future__ import annotations

import time
from typing import Any


def zero_latency_target(sandbox: Any, scenario: str, service: str, /, **fields: Any) -> Any:
    """Stage `scenario` on the sandbox (page service answering at once) and return a target for
    `service`; `fields` override the target's (e.g. its `cloud` block)."""
    from shipyard.deployments.demo.run import sandbox_target, stage

    stage(sandbox, scenario, serving={"gpu_ms": 0, "cpu_ms": 0})
    canary = sandbox_target().canary.model_copy(update={"min_speedup": None})
    return sandbox_target(service=service, canary=canary, **fields)


def timed_release(tag: str, target: Any) -> tuple[float, Any]:
    """(seconds, ReleaseResult) of one release of the demo image's `tag` to `target`."""
    from shipyard.deployments.demo.run import DEMO_IMAGE
    from shipyard.flows.release.flow import run_release

    started = time.perf_counter()
    result = run_release(tag, target, image=f"{DEMO_IMAGE}:{tag}")
    return time.perf_counter() - started, result
