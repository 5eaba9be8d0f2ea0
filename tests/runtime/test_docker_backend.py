"""The local Docker build backend (BuildSettings.backend = "docker"): the same flows build on a
Docker daemon given by prefect-docker's DockerHost block (here the sandbox's own dockerd, by its
socket) instead of Cloud Build. A failing RUN fails the build with the step's real output; a
data root with less free disk than the setting refuses. The whole release on this backend (tiers
CACHED, the code layer built, the image serving the canary, faults rolled back, prewarm, a
dependency change) is test_release_on_containers.py's Docker variant."""

from __future__ import annotations

import uuid

import pytest
from engine_kit import GitRepo

SERVER = (
    "import http.server, os\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = open('/srv/greeting.txt', 'rb').read()\n"
    "        self.send_response(200); self.send_header('content-length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"
)


def _dockerfile(runtime_run: str) -> str:
    # `# syntax=` as the example has it: this daemon cannot pull the frontend image, so the
    # settings ask for the daemon's built-in frontend.
    return (
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE_IMAGE\n"
        "FROM ${BASE_IMAGE} AS deps\n"
        "COPY deps.txt /srv/deps.txt\n"
        "RUN python3 -c \"print('deps installed')\" > /srv/deps.log\n"
        "FROM deps AS runtime\n"
        "COPY server.py /srv/server.py\n"
        f"RUN {runtime_run}\n"
        'CMD ["python3", "/srv/server.py"]\n'
    )


@pytest.fixture
def docker_settings(engine_sandbox, tmp_path):
    """(saved BuildSettings name, saved CacheTiers name, repo) building on the sandbox's dockerd."""
    from prefect_docker import DockerHost

    from shipyard.blocks.build_settings import BuildSettings
    from shipyard.blocks.cache_tiers import CacheTier, CacheTiers

    def make(runtime_run: str, min_free_disk_gb: float = 4.0) -> tuple[str, str, GitRepo]:
        name = f"docker-{uuid.uuid4().hex[:10]}"
        # Files of their own: nothing is in the daemon's build cache from another test.
        repo = GitRepo(
            tmp_path / name,
            {
                "Dockerfile": _dockerfile(runtime_run),
                "deps.txt": f"requests  # {name}\n",
                "server.py": f"# {name}\n{SERVER}",
            },
        )
        BuildSettings(
            image_repository=f"{engine_sandbox.registry_host}/{name}/app",
            git_url=repo.url,
            source_dir=".",
            backend="docker",
            docker_host=DockerHost(base_url=engine_sandbox.docker_host),
            docker_network="host",
            docker_builtin_frontend=True,
            min_free_disk_gb=min_free_disk_gb,
        ).save(name)
        CacheTiers(tiers=[CacheTier(name="deps", target="deps", files=["deps.txt"])]).save(name)
        return name, name, repo

    return make


def test_a_failing_run_fails_the_docker_build_with_the_steps_real_output(
    docker_settings, engine_base
):
    from shipyard.flows.build.cloud_build_run import BuildFailedError
    from shipyard.flows.build.flow import build_release_image

    marker = uuid.uuid4().hex
    settings, tiers, _ = docker_settings(
        f"python3 -c \"import sys; print('broken-{marker}'); sys.exit(3)\""
    )
    with pytest.raises(BuildFailedError) as failed:
        build_release_image(
            "v1", "HEAD", base_image=engine_base, settings_block=settings, tiers_block=tiers
        )
    message = str(failed.value)
    assert failed.value.step.startswith("[runtime ") and "RUN python3" in failed.value.step
    assert f"broken-{marker}" in message  # the RUN's own output
    assert "exit code: 3" in message


def test_a_data_root_with_less_free_disk_than_the_setting_refuses_to_build(
    docker_settings, engine_base
):
    from shipyard.flows.build.docker_build_run import DiskSpaceError
    from shipyard.flows.build.flow import build_release_image

    settings, tiers, _ = docker_settings("true", min_free_disk_gb=1_000_000)
    with pytest.raises(DiskSpaceError) as refused:
        build_release_image(
            "v1", "HEAD", base_image=engine_base, settings_block=settings, tiers_block=tiers
        )
    message = str(refused.value)
    assert "GB free on its data root" in message and "DockerRootDir" in message
    assert "BuildSettings.min_free_disk_gb = 1000000 GB" in message
    assert "docker system prune" in message  # the fix
