"""Helpers of the container-engine tests: a Cloud Build request as flows send it, and waiting
for its result and log through the official clients."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from google.cloud.devtools import cloudbuild_v1 as cb

from sandbox.admin import SandboxAdmin

_GIT = ["git", "-c", "user.email=tests@shipyard.invalid", "-c", "user.name=shipyard tests"]


class GitRepo:
    """A throwaway git repository with the files given (the build's gitSource)."""

    def __init__(self, root: Path, files: dict[str, str]) -> None:
        self.root = root
        root.mkdir(parents=True)
        subprocess.run([*_GIT, "init", "-q", "-b", "main", str(root)], check=True)
        self.write(files)

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def write(self, files: dict[str, str]) -> str:
        for name, text in files.items():
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        subprocess.run([*_GIT, "-C", str(self.root), "add", "-A"], check=True)
        subprocess.run([*_GIT, "-C", str(self.root), "commit", "-q", "-m", "change"], check=True)
        return subprocess.check_output(
            ["git", "-C", str(self.root), "rev-parse", "HEAD"], text=True
        ).strip()

    def tag(self, name: str, commit: str) -> None:
        """Point the (lightweight) tag `name` at `commit`: a release checks that its tag does."""
        subprocess.run([*_GIT, "-C", str(self.root), "tag", "-f", name, commit], check=True)


PROJECT = "shipyard-sandbox"


def build_request(repo: GitRepo, base: str, tag: str) -> cb.Build:
    """The request flows/build/cloud_build_request.py sends (builder step, then buildx build)."""
    args = ["buildx", "build", "--progress=plain", "--provenance=false", "--file", "Dockerfile"]
    args += ["--build-arg", f"BASE_IMAGE={base}", "--tag", tag, "--push", "."]
    return cb.Build(
        source=cb.Source(git_source=cb.GitSource(url=repo.url, revision="HEAD")),
        steps=[
            cb.BuildStep(
                name="gcr.io/cloud-builders/docker",
                args=[
                    *("buildx", "create", "--name", "shipyard", "--driver", "docker-container"),
                    *("--bootstrap", "--use"),
                ],
            ),
            cb.BuildStep(name="gcr.io/cloud-builders/docker", args=args),
        ],
        timeout={"seconds": 300},
    )


def cloud_build(cloud, repo: GitRepo, base: str, tag: str) -> tuple[cb.Build, str]:
    client = cloud.builds_client()
    operation = client.create_build(project_id=PROJECT, build=build_request(repo, base, tag))
    build_id = operation.metadata.build.id
    deadline = time.monotonic() + 300
    build = client.get_build(project_id=PROJECT, id=build_id)
    while build.status.name in ("QUEUED", "WORKING") and time.monotonic() < deadline:
        time.sleep(0.2)
        build = client.get_build(project_id=PROJECT, id=build_id)
    return build, build_log(build_id)


def build_log(build_id: str) -> str:
    """Every entry of the build, in write order, from the sandbox's Cloud Logging store."""
    admin = SandboxAdmin(os.environ["SHIPYARD_GOOGLE_ENDPOINT"])
    try:
        entries = admin.logs()
    finally:
        admin.close()
    return "\n".join(
        e.get("textPayload", "")
        for e in entries
        if e.get("resource", {}).get("labels", {}).get("build_id") == build_id
    )
