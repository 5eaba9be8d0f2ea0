"""The approval gate's stand-in release, and a runner that serves it with `promote` and `abort`.

`gate-standin` does what the release does around a gate: it reads (or starts) the rollout
journal, asks the gate before its step, and records the decision — in the Variable
`standin-<service>`, with how many times the flow body ran (a suspended run is run again from the
start when it is resumed). H3's real release replaces it in the end-to-end tests.

`python gate_standin.py NAME` serves `gate-standin/NAME`, `abort/abort` and `promote/promote`
(the names the gate and prefect.yaml use) until it is stopped.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, cast

from prefect import flow, serve
from prefect.context import FlowRunContext
from prefect.variables import Variable

from shipyard.blocks.release_target import ReleaseTarget
from shipyard.flows.rollout import gate, journal
from shipyard.flows.rollout.control import abort, promote

STANDIN_FLOW = "gate-standin"
EVIDENCE = "## Step 10% passed\n\n| | new | stable |\n|---|---|---|\n| p95 | 31 ms | 30 ms |\n"


def decision_variable(service: str) -> str:
    return f"standin-{service}"


@flow(name=STANDIN_FLOW, flow_run_name="standin-{target}", persist_result=True)
def standin(target: str, percent: int = 50) -> dict[str, Any]:
    resolved = cast(ReleaseTarget, ReleaseTarget.load(target))
    service = resolved.service
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None
    run_id = str(context.flow_run.id)
    seen = Variable.get(decision_variable(service), default=None) or {}
    runs = int(seen.get("runs", 0)) + 1
    Variable.set(decision_variable(service), {"runs": runs}, overwrite=True)
    current = journal.read(service)
    if current is None or current.flow_run_id != run_id:
        current = journal.RolloutJournal(
            service=service,
            target=target,
            flow_run_id=run_id,
            git_tag="v7.0.0",
            region="europe-west1",
            new=f"{service}-v7-0-0",
            stable=f"{service}-v6-0-0",
            percent=10,
        )
        journal.write(current)
    decision = gate.ask(
        resolved,
        service=service,
        git_tag=current.git_tag,
        percent=percent,
        evidence_md=EVIDENCE,
        key=f"gate-{percent}",
        journal=current,
    )
    journal.clear(service)
    answer = {"runs": runs, **dataclasses.asdict(decision)}
    Variable.set(decision_variable(service), answer, overwrite=True)
    return answer


if __name__ == "__main__":
    name = sys.argv[1]
    serve(
        standin.to_deployment(name=name),
        abort.to_deployment(name="abort"),
        promote.to_deployment(name="promote"),
        print_starting_message=False,
    )
