"""The sample page service (examples/page-service/app) as one image on the engine sandbox,
built in seconds: the session's python base, the app, and the app's dependencies copied from the
test process's own installation (the same wheels, CPython 3.11 as the base's Debian python3), in
one COPY layer. No package index is asked and no tier is built: the tiered build of this same
service is tests/runtime/test_release_on_containers.py's subject; tests that release many times
(the progressive steps) release this image by reference (`run_release(image=...)`).
"""

from __future__ import annotations

import importlib.metadata as md
import re
import shutil
import subprocess
from pathlib import Path

from packaging.requirements import Requirement

PAGE_APP = Path(__file__).resolve().parents[2] / "examples" / "page-service" / "app"
# examples/page-service/requirements.txt's packages (its pins are the tiered build's).
PAGE_REQUIREMENTS = ("fastapi", "uvicorn", "pillow", "python-multipart")

DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY site/ /opt/page-site/
COPY app/ /app/service/
ENV PYTHONPATH=/opt/page-site PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PORT=8080
WORKDIR /app/service
CMD exec python3 -m uvicorn main:app --host 0.0.0.0 --port "${PORT}"
"""


def _closure(names: tuple[str, ...]) -> list[md.Distribution]:
    """The installed distributions `names` need (their requirements, extras left out)."""
    seen: dict[str, md.Distribution] = {}
    todo = list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        dist = md.distribution(name)
        seen[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _copy_site(target: Path) -> None:
    for dist in _closure(PAGE_REQUIREMENTS):
        for file in dist.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue  # console scripts outside site-packages; byte code
            source = Path(str(dist.locate_file(file)))
            if source.is_file():
                (target / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / file)


def build_page_image(engine_session, engine_base: str, context: Path) -> str:
    """Build and push the page service image; returns it by digest."""
    from sandbox.engine.daemon import DOCKER_CLI, Engine, docker

    _copy_site(context / "site")
    shutil.copytree(PAGE_APP, context / "app", ignore=shutil.ignore_patterns("__pycache__"))
    (context / "Dockerfile").write_text(DOCKERFILE)
    engine = Engine(engine_session.docker_host)
    tag = f"{engine_session.registry_host}/runtime/page-service:steps"
    command = [DOCKER_CLI, "build", "--network=host", "--build-arg", f"BASE_IMAGE={engine_base}"]
    command += ["--tag", tag, str(context)]
    built = subprocess.run(
        command,
        env=engine.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    pushed = docker(engine, "push", tag, timeout=300)
    assert pushed.returncode == 0, pushed.stdout[-2000:] + pushed.stderr[-2000:]
    digest = re.search(r"digest: (sha256:[0-9a-f]{64})", pushed.stdout)
    assert digest, pushed.stdout
    return f"{tag.rsplit(':', 1)[0]}@{digest.group(1)}"
