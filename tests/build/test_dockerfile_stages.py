"""One Dockerfile parser (tasks/dockerfile.py) for the cache tiers and the sandbox's executor:
`FROM --platform=...` stages keep their names, heredoc bodies start no stage."""

from __future__ import annotations

import pytest

from shipyard.flows.build.tier_fingerprint import stage_texts, tier_fingerprint
from shipyard.tasks.dockerfile import DockerfileError, parse_dockerfile

PLATFORM = """\
# syntax=docker/dockerfile:1
ARG BASE_IMAGE
FROM --platform=$BUILDPLATFORM ${BASE_IMAGE} AS base
RUN apt-get update && \\
    # why: the runtime needs it
    apt-get install -y libgomp1

FROM --platform=linux/amd64 base AS Python-Deps
COPY requirements.txt .
RUN pip install -r requirements.txt
FROM python-deps
CMD ["python", "-m", "app"]
"""


def test_platform_stages_keep_their_names_and_their_lines():
    prelude, stages = stage_texts(PLATFORM)

    assert prelude == "ARG BASE_IMAGE"
    assert list(stages) == ["base", "python-deps", "2"]  # names lowercased, as BuildKit's
    assert stages["base"] == (
        "FROM --platform=$BUILDPLATFORM ${BASE_IMAGE} AS base\n"
        "RUN apt-get update && \\\n"
        "apt-get install -y libgomp1"
    )
    assert stages["python-deps"].splitlines()[-1] == "RUN pip install -r requirements.txt"
    # the sandbox's executor reads the same stages from the same parser
    assert [s.name for s in parse_dockerfile(PLATFORM).stages] == ["base", "python-deps", None]


def test_comments_do_not_change_a_tiers_fingerprint_but_its_text_does():
    def fingerprint(text: str) -> str:
        prelude, stages = stage_texts(text)
        return tier_fingerprint(stages["python-deps"], prelude, "base@sha256:0", [], {})

    commented = PLATFORM.replace("COPY requirements.txt .", "# pinned\nCOPY requirements.txt .")
    assert fingerprint(commented) == fingerprint(PLATFORM)
    assert fingerprint(PLATFORM.replace("-r requirements", "-U -r requirements")) != fingerprint(
        PLATFORM
    )


HEREDOC = """\
FROM python:3.11-slim AS base
RUN <<EOF
pip install uv
FROM not-a-stage
EOF
COPY <<-CONF /etc/app.conf
\tmode=fast
\tCONF
FROM base AS app
"""


def test_heredoc_bodies_start_no_stage_for_the_pipeline_and_the_sandbox_refuses_them():
    _, stages = stage_texts(HEREDOC)

    assert list(stages) == ["base", "app"]
    assert "pip install uv" in stages["base"] and "mode=fast" in stages["base"]
    with pytest.raises(DockerfileError, match="heredocs"):
        parse_dockerfile(HEREDOC)  # the sandbox's executor does not run them


def test_a_dockerfile_buildkit_refuses_is_refused_by_name():
    with pytest.raises(DockerfileError, match="line 2: unknown instruction: RUNN"):
        stage_texts("FROM base AS x\nRUNN echo typo\n")
