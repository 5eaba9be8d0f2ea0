"""promote / abort without a suspended release: the command filed for a baking rollout (taken
once, only by the run the journal names), and the refusals — no rollout in progress, a dead run
to promote — as one line from the CLI, with no flow run started."""

from __future__ import annotations

import time
import uuid

import pytest
from cli_kit import run_cli


def _target(service: str, block: str) -> None:
    from shipyard.blocks.release_target import ReleaseTarget

    ReleaseTarget(service=service, regions=["europe-west1"], project="gate-test").save(
        block, overwrite=True
    )


def _journal(service: str, block: str, run_id: str) -> None:
    from shipyard.flows.rollout import journal

    journal.write(
        journal.RolloutJournal(
            service=service,
            target=block,
            flow_run_id=run_id,
            git_tag="v3.0.0",
            region="europe-west1",
            new=f"{service}-v3-0-0",
            stable=f"{service}-v2-0-0",
            percent=10,
        )
    )


def test_commands_and_refusals(prefect_server, monkeypatch, capsys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.states import Running

    from shipyard.flows.rollout import commands, control, journal

    tag = uuid.uuid4().hex[:6]
    service, block = f"cmd-{tag}", f"cmd-{tag}"
    _target(service, block)

    # No rollout: refused in one line from the CLI (by block name or service), no run started.
    code, out = run_cli(monkeypatch, capsys, "promote", service, "--comment", "go")
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert f"no rollout of {service} is in progress; no release of it is recorded" in out
    with pytest.raises(commands.NoRolloutInProgress):
        commands.request(service, "abort", "carol")
    with pytest.raises(ValueError, match="command='rewind'"):
        commands.request(service, "rewind", "carol")  # type: ignore[arg-type]

    # A baking rollout (its run Running): promote files the command; the bake loop takes it once.
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(flow=_named(f"bake-{tag}"), state=Running())
    _journal(service, block, str(run.id))
    assert control.check(block, "abort").action == "request"
    said = control.promote(target=block, comment="bake looks fine", by="dana")
    assert "to promote: it acts at its next analysis tick" in said
    assert commands.take(service, str(uuid.uuid4())) is None  # not the journal's run
    assert commands.take(service, str(run.id)) == commands.Given(
        "promote", "dana", "bake looks fine"
    )
    assert commands.take(service, str(run.id)) is None  # once
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"rollout-promote-{service}"])
            )
        )
    assert artifacts and "dana" in str(artifacts[0].data)
    sent = _until_event("shipyard.rollout.promote", service)
    assert sent["action"] == "request" and sent["by"] == "dana"

    # A command filed for an earlier rollout never steers the next one.
    commands.request(service, "abort", "erin")
    _journal(service, block, str(uuid.uuid4()))
    assert commands.take(service, journal.read(service).flow_run_id) is None  # type: ignore[union-attr]
    assert commands.pending(service) is None

    # The journal's run is gone (dead): promote is refused, naming abort and re-release.
    code, out = run_cli(monkeypatch, capsys, "promote", block)
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert "nothing can promote it" in out and f"shipyard abort {service}" in out
    journal.clear(service)


def _until_event(name: str, service: str) -> dict:
    """The payload of the service's last `name` event (the server stores events shortly after
    they are posted: polled)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    wanted = EventFilter(
        event=EventNameFilter(name=[name]),
        resource=EventResourceFilter(id=[f"shipyard.cloud-run.service.{service}"]),
    ).model_dump(mode="json")
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            page = client.request("POST", "/events/filter", json={"filter": wanted, "limit": 5})
            events = page.json()["events"]
            if events:
                return events[0]["payload"]
            assert time.monotonic() < deadline, f"no {name} event of {service}"
            time.sleep(0.3)


def _named(name: str):
    from prefect import flow

    @flow(name=name)
    def _noop() -> None:
        return None

    return _noop


def test_paused_gate_in_process(prefect_server):
    """A release run without a deployment (the CLI's in-process release) is paused, not
    suspended: `abort` resumes it rejected, with the approver and comment; an unanswered one is
    resumed by the waiting process's own timer with the timeout's outcome (here: approve)."""
    from concurrent.futures import ThreadPoolExecutor

    from gate_standin import standin
    from prefect.client.orchestration import get_client

    from shipyard.blocks.release_target import ReleaseTarget
    from shipyard.blocks.rollout_policy import RolloutPolicy, RolloutStep
    from shipyard.flows.rollout import control, journal

    tag = uuid.uuid4().hex[:6]
    blocks = {"abort": f"paused-a-{tag}", "timeout": f"paused-t-{tag}"}
    for case, block in blocks.items():
        ReleaseTarget(
            service=block,
            regions=["europe-west1"],
            project="gate-test",
            rollout=RolloutPolicy(
                steps=[RolloutStep(percent=25, approval=True)],
                gate_timeout_s=600 if case == "abort" else 2,
                on_gate_timeout="approve",
            ),
        ).save(block, overwrite=True)
    with ThreadPoolExecutor(2) as pool:
        futures = {case: pool.submit(standin, target=block) for case, block in blocks.items()}
        deadline = time.monotonic() + 120
        while True:
            waiting = journal.read(blocks["abort"])
            if waiting is not None and waiting.state == "awaiting-approval":
                with get_client(sync_client=True) as client:
                    state = client.read_flow_run(uuid.UUID(waiting.flow_run_id)).state
                if state is not None and state.is_paused():
                    break
            assert time.monotonic() < deadline, "the in-process release never paused"
            time.sleep(0.2)
        assert state.name == "Paused" and waiting.expiry_run_id is None  # no expiry run
        said = control.abort(target=blocks["abort"], comment="too risky", by="frank")
        assert "rejected the gate" in said
        answers = {case: future.result(timeout=120) for case, future in futures.items()}
    assert answers["abort"] == {
        "runs": 1,  # paused in its process: never run again
        "approved": False,
        "by": "frank",
        "comment": "too risky",
        "timed_out": False,
    }
    assert answers["timeout"] == {
        "runs": 1,
        "approved": True,  # on_gate_timeout="approve"
        "by": "timeout",
        "comment": "no decision within 2 s",
        "timed_out": True,
    }
