"""Git credentials live in a Prefect Secret block named by BuildSettings.git_credentials_secret
and are put into the URL only when git runs: a URL with user:token@ is refused (block, setup),
git's failures name the repository without them, and after a release that used the token it is
nowhere in the Prefect server's events, logs, artifacts, runs or database (the session's secrets
scan, tests/secrets_scan_kit.py, is given the token)."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid

import pytest
import secrets_scan_kit
from cli_kit import run_cli
from pydantic import ValidationError

from shipyard.tasks.git_source import GitError, checkout, resolve_revision

# Port 9 on loopback (discard) refuses at once: git fails fast, naming the URL it tried.
PLAIN_URL = "https://127.0.0.1:9/org/app.git"


def _url(token: str) -> str:
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


def test_a_git_url_with_credentials_is_refused_with_the_fix_and_without_echoing_it(
    monkeypatch, capsys
):
    from shipyard.blocks.build_settings import BuildSettings

    token = "ghp_" + secrets.token_hex(12)
    with pytest.raises(ValidationError) as caught:
        BuildSettings(git_url=_url(token))
    assert token not in str(caught.value)
    assert "git_credentials_secret" in str(caught.value) and "--git-token-secret" in str(
        caught.value
    )
    # ssh's user `git@` holds no secret: accepted
    assert BuildSettings(git_url="ssh://git@127.0.0.1/org/app.git").git_url

    code, output = run_cli(monkeypatch, capsys, "setup", "--git-url", _url(token))
    assert code == 2, output
    assert token not in output and "--git-token-secret" in output


@pytest.mark.slow
def test_git_token_secret_leaks_nowhere(stage, make_target, sandbox, pinned_base):
    from prefect.blocks.system import Secret

    from shipyard.blocks.build_settings import BuildSettings
    from shipyard.flows.release.flow import release

    stage("default")
    started = dt.datetime.now(dt.UTC)
    token = secrets_scan_kit.remember("git token", "ghp_" + secrets.token_hex(12))
    secret_block = f"git-token-{uuid.uuid4().hex[:8]}"
    Secret(value=f"ci-bot:{token}").save(secret_block)
    settings = f"git-creds-{uuid.uuid4().hex[:8]}"
    block = BuildSettings(
        image_repository=f"{sandbox.registry_host}/{settings}/page-service",
        git_url=PLAIN_URL,
        git_credentials_secret=secret_block,
        source_dir="page-service",
    )
    block.save(settings)
    # git gets the token (at use time only)
    assert block.resolved_git_url() == _url(token)
    target = make_target(base_image=pinned_base, build_settings_block=settings)

    state = release("v12.0.0", target, return_state=True)

    assert state.is_failed()
    with pytest.raises(Exception) as caught:
        state.result()
    assert "127.0.0.1:9/org/app.git" in str(caught.value)  # the failure names the repository
    haystacks = secrets_scan_kit.Haystacks()
    secrets_scan_kit.prefect_texts(haystacks, since=started)
    haystacks.add("exception", [("release", str(caught.value) + str(state.message))])
    haystacks.files = secrets_scan_kit.database_files()
    assert haystacks.of("events"), "the scan read no event: it would prove nothing"
    assert haystacks.hits({"git token": token}) == []
