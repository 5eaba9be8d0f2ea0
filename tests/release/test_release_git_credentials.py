"""A git URL with credentials (https://user:token@host/repo.git) reaches no exception, log or
artifact: git's failures name the repository without its user:token@."""

from __future__ import annotations

import secrets
import uuid

import pytest

from shipyard.tasks.git_source import GitError, checkout, resolve_revision


def _url(token: str) -> str:
    # Port 9 on loopback (discard) refuses at once: git fails fast, naming the URL it tried.
    return f"https://ci-bot:{token}@127.0.0.1:9/org/app.git"


@pytest.mark.parametrize("call", ["resolve", "checkout"])
def test_git_errors_carry_no_credentials(call, tmp_path):
    token = "ghp_" + secrets.token_hex(12)

    with pytest.raises(GitError) as caught:
        if call == "resolve":
            resolve_revision(_url(token), "v1.0.0")
        else:
            checkout(_url(token), "0" * 40, into=tmp_path / "src")

    message = str(caught.value)
    assert "127.0.0.1:9/org/app.git" in message  # still says which repository failed
    assert token not in message and "ci-bot" not in message


@pytest.mark.slow
def test_release_with_a_credentialed_git_url_leaks_it_nowhere(
    stage, make_target, sandbox, pinned_base
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    from shipyard.blocks.build_settings import BuildSettings
    from shipyard.flows.release.flow import release

    stage("default")
    token = "ghp_" + secrets.token_hex(12)
    settings = f"git-creds-{uuid.uuid4().hex[:8]}"
    BuildSettings(
        image_repository=f"{sandbox.registry_host}/{settings}/page-service",
        git_url=_url(token),
        source_dir="page-service",
    ).save(settings)
    target = make_target(base_image=pinned_base, build_settings_block=settings)

    state = release("v12.0.0", target, return_state=True)

    assert state.is_failed()
    with pytest.raises(Exception) as caught:
        state.result()
    assert "build of v12.0.0 failed" in str(caught.value)
    flow_run_id = state.state_details.flow_run_id
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        flow_run = client.read_flow_run(flow_run_id)
    haystacks = [str(caught.value), str(state.message), flow_run.model_dump_json()]
    haystacks += [log.message for log in logs]
    haystacks += [str(a.data) + str(a.description) for a in artifacts]
    assert any("127.0.0.1:9/org/app.git" in h for h in haystacks)  # the failure is reported
    assert not [h for h in haystacks if token in h]
