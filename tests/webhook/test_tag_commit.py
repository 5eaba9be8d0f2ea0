"""The commit a tag releases: annotated tags resolved to their commit, and a release refused when
its tag does not exist or points at another commit.

GitHub's push delivery for an annotated tag carries `ref: refs/tags/v1.2.3`, `after` = the tag
object's sha and `head_commit.id` = the commit (docs.github.com/en/webhooks/
webhook-events-and-payloads#push: "For pushes where `after` refers to an annotated tag object,
an expanded representation of the commit pointed to by the annotated tag"). The repositories
here are real git repositories on disk (file:// URLs), which git treats like a remote.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from receiver_kit import app_of, journal_rows, make_receiver, send_json, tag_push

from shipyard.tasks.git_source import TagMismatchError, resolve_revision, verify_tag

_GIT = ["git", "-c", "user.email=tests@shipyard.invalid", "-c", "user.name=shipyard tests"]


class Repo:
    """A throwaway repository: two commits, `v1.2.3` annotated at the second, `v1.2.4`
    lightweight at the first."""

    def __init__(self, root: Path):
        self.root = root
        self.git("init", "-q", "-b", "main", str(root))
        (root / "a.txt").write_text("one\n")
        self.git("-C", str(root), "add", "-A")
        self.git("-C", str(root), "commit", "-q", "-m", "one")
        self.first = self.rev("HEAD")
        (root / "a.txt").write_text("two\n")
        self.git("-C", str(root), "commit", "-q", "-am", "two")
        self.commit = self.rev("HEAD")
        self.git("-C", str(root), "tag", "-a", "v1.2.3", "-m", "release v1.2.3")
        self.tag_object = self.rev("refs/tags/v1.2.3")
        self.git("-C", str(root), "tag", "v1.2.4", self.first)
        self.url = f"file://{root}"

    def git(self, *args: str) -> str:
        env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1"}
        done = subprocess.run([*_GIT, *args], check=True, capture_output=True, text=True, env=env)
        return done.stdout.strip()

    def rev(self, ref: str) -> str:
        return self.git("-C", str(self.root), "rev-parse", ref)


@pytest.fixture
def repo(tmp_path) -> Repo:
    return Repo(tmp_path / "repo")


def test_an_annotated_tag_object_resolves_to_its_commit(repo):
    assert repo.tag_object != repo.commit  # an annotated tag: its own object
    assert resolve_revision(repo.url, repo.tag_object) == repo.commit
    assert resolve_revision(repo.url, "v1.2.3") == repo.commit
    assert resolve_revision(repo.url, repo.commit) == repo.commit
    assert resolve_revision(repo.url, "v1.2.4") == repo.first


def test_verify_tag_accepts_the_tags_commit_or_object_and_names_both_otherwise(repo):
    # annotated: the commit, the tag object (GitHub's `after`), a short sha, nothing given
    for given in (repo.commit, repo.tag_object, repo.commit[:12], None, "v1.2.3"):
        assert verify_tag(repo.url, "v1.2.3", given) == repo.commit, given
    # lightweight
    assert verify_tag(repo.url, "v1.2.4", repo.first) == repo.first

    with pytest.raises(TagMismatchError) as other:
        verify_tag(repo.url, "v1.2.3", repo.first)
    message = str(other.value)
    assert "'v1.2.3'" in message and repo.commit in message and repo.first in message
    with pytest.raises(TagMismatchError) as lightweight:
        verify_tag(repo.url, "v1.2.4", repo.commit)
    assert repo.first in str(lightweight.value) and repo.commit in str(lightweight.value)

    arbitrary = "9" * 40
    with pytest.raises(TagMismatchError, match=r"git tag 'v9\.9\.9' does not exist") as missing:
        verify_tag(repo.url, "v9.9.9", arbitrary)
    assert arbitrary in str(missing.value)


def test_the_receiver_passes_on_the_commit_of_an_annotated_tag(tmp_path, monkeypatch, repo):
    """GitHub's real shape: `after` is the tag object, `head_commit.id` the commit."""
    monkeypatch.setenv("SHIPYARD_WEBHOOK_SECRET", "whsec-input-tests-0123456789")
    receiver = make_receiver(tmp_path)
    payload = tag_push("v1.2.3", commit=repo.tag_object)
    payload["head_commit"] = {"id": repo.commit, "message": "two", "tree_id": "0" * 40}
    answer = send_json(app_of(receiver), payload)
    assert answer.status_code == 202, answer.text
    assert answer.json()["commit"] == repo.commit
    (row,) = journal_rows(receiver)
    assert row["commit_sha"] == repo.commit
    # A lightweight tag: `after` and `head_commit.id` are both the commit.
    light = send_json(app_of(receiver), tag_push("v1.2.4", commit=repo.first))
    assert light.json()["commit"] == repo.first


# ---------------------------------------------------------------- the release


@pytest.fixture
def build_block(sandbox, repo, request) -> str:
    from shipyard.blocks.build_settings import BuildSettings

    name = "tagc-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    BuildSettings(
        image_repository=f"{sandbox.registry_host}/{name}/page-service",
        git_url=repo.url,
        source_dir=".",
    ).save(name, overwrite=True)
    return name


def test_the_release_builds_the_tags_commit_from_the_tag_object(build_block, repo):
    """The release's commit check (flows/build/inputs.py `tag_commit`, what
    flows/release/image.py hands to the build): the webhook's tag object becomes the commit."""
    from shipyard.flows.build.inputs import tag_commit

    assert tag_commit(build_block, "v1.2.3", repo.tag_object) == repo.commit
    assert tag_commit(build_block, "v1.2.3", None) == repo.commit


@pytest.mark.slow  # a release flow on the sandbox (~10 s)
def test_tag_at_another_commit_refused(stage, make_target, sandbox_admin, build_block, repo):
    from shipyard.flows.release.flow import ReleaseError, release

    stage("default")
    target = make_target(build_settings_block=build_block)
    arbitrary = "9" * 40
    with pytest.raises(ReleaseError) as refused:
        release("v1.2.3", target, commit=arbitrary)
    message = str(refused.value)
    assert "'v1.2.3'" in message and repo.commit in message and arbitrary in message

    with pytest.raises(ReleaseError, match=r"git tag 'v7\.7\.7' does not exist"):
        release("v7.7.7", target, commit=repo.commit)

    calls = sandbox_admin.calls()
    assert calls.get("build.create", 0) == 0
    changes = [k for k in calls if k.startswith(("run.create", "run.update", "run.revision"))]
    assert changes == []
    assert sandbox_admin.traffic_history(target.service) == []
