"""Build bench: the sample service built through the cache tiers on a Docker daemon, against a
plain `docker build` of the same change without tier caches, measured in one run.

The sandbox's own Docker daemon (fresh data root: nothing cached), the base image over the
Debian root filesystem, examples/page-service in a throwaway git repository, BuildSettings with
backend=docker (the flows build through prefect-docker's DockerHost). Figures (JSON with --json):

- cold_build_s: prewarm of every tier plus the release image, from nothing (the flows' time);
- warm_release_build_s: median of `--changes` release builds after the prewarm, each after a
  code-only change (a line in app/main.py); hit_rate: the median of those builds' hit rates
  (CACHED / (CACHED + RUN) from BuildKit's own log);
- plain_build_s: the peer, median of `--plain` runs: the same code-only change built with
  `docker build --no-cache --target runtime` and pushed (what a CI runner without tier caches
  does every time); speedup_vs_plain = plain_build_s / warm_release_build_s (goal >= 3);
- load_average: the 1-minute load when the bench ended (the machine is shared: say it with the
  figures).

Usage: python bench/build.py --json [--changes 3] [--plain 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "page-service"
GIT = ["git", "-c", "user.email=bench@shipyard.invalid", "-c", "user.name=shipyard bench"]


def _repo(into: Path) -> Path:
    shutil.copytree(EXAMPLE, into, ignore=shutil.ignore_patterns("node_modules", "__pycache__"))
    subprocess.run([*GIT, "init", "-q", "-b", "main", str(into)], check=True)
    _commit(into)
    return into


def _commit(repo: Path) -> None:
    subprocess.run([*GIT, "-C", str(repo), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(repo), "commit", "-q", "-m", "change"], check=True)


def _code_change(repo: Path, n: int) -> None:
    main = repo / "app" / "main.py"
    main.write_text(main.read_text() + f"\n# bench change {n}: {uuid.uuid4().hex}\n")
    _commit(repo)


def _plain_build(docker_host: str, repo: Path, base: str, tag: str) -> float:
    """`docker build --no-cache` of the runtime target, then push: no tier cache, no BuildKit
    cache (the syntax line dropped as the backend does on a daemon without Docker Hub)."""
    from sandbox.engine.daemon import DOCKER_CLI  # Debian's 20.10 client: BuildKit without buildx
    from shipyard.tasks.docker_daemon import SYNTAX_DIRECTIVE

    env = {**os.environ, "DOCKER_HOST": docker_host, "DOCKER_BUILDKIT": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        dockerfile = Path(tmp) / "Dockerfile"
        dockerfile.write_text(SYNTAX_DIRECTIVE.sub("", (repo / "Dockerfile").read_text(), count=1))
        started = time.perf_counter()
        for args in (
            [
                *(
                    "build",
                    "--no-cache",
                    "--network=host",
                    "--progress=plain",
                    "-f",
                    str(dockerfile),
                ),
                *("--target", "runtime", "--build-arg", f"BASE_IMAGE={base}", "-t", tag, str(repo)),
            ],
            ["push", tag],
        ):
            proc = subprocess.run([DOCKER_CLI, *args], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"docker {args[0]} failed: {proc.stdout[-2000:]}{proc.stderr}")
        return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--changes", type=int, default=3, help="warm release builds (median)")
    parser.add_argument("--plain", type=int, default=1, help="plain docker builds (median)")
    args = parser.parse_args()
    logging.getLogger("prefect").setLevel(logging.ERROR)

    from prefect_docker import DockerHost

    from bench.figures import print_figures
    from sandbox.engine.rootfs import ensure_rootfs
    from sandbox.manager import start_sandbox
    from sandbox.seed import seed_cuda_image
    from shipyard.blocks.build_settings import BuildSettings
    from shipyard.blocks.cache_tiers import CacheTiers
    from shipyard.deployments.demo.run import prefect_api
    from shipyard.flows.build.flow import build_release_image
    from shipyard.flows.build.prewarm import prewarm_cache_tiers

    work = Path(tempfile.mkdtemp(prefix="shipyard-bench-build-"))
    info = start_sandbox(root=work / "sandbox", engine=True)
    try:
        if not info.docker_host:
            raise SystemExit(f"bench/build.py needs the container engine: {info.mode_note}")
        with prefect_api(startup_timeout=300), info.env_applied():
            seeded = seed_cuda_image(info.registry_url, "base-images/cuda", rootfs=ensure_rootfs())
            base = f"{seeded.repository}@{seeded.digest}"
            repo = _repo(work / "repo")
            name = f"bench-{uuid.uuid4().hex[:8]}"
            BuildSettings(
                image_repository=f"{info.registry_host}/bench/page-service",
                git_url=f"file://{repo}",
                source_dir=".",
                backend="docker",
                docker_host=DockerHost(base_url=info.docker_host),
                docker_network="host",
                docker_builtin_frontend=True,
            ).save(name)
            CacheTiers().save(name)
            blocks = {"settings_block": name, "tiers_block": name, "base_image": base}

            started = time.perf_counter()
            prewarm_cache_tiers(**blocks)
            build_release_image("v0", "HEAD", **blocks)
            cold = time.perf_counter() - started

            warm, rates = [], []
            for n in range(1, args.changes + 1):
                _code_change(repo, n)
                started = time.perf_counter()
                image = build_release_image(f"v{n}", "HEAD", **blocks)
                warm.append(time.perf_counter() - started)
                rates.append(image.hit_rate)

            plain = []
            for n in range(args.plain):
                _code_change(repo, 100 + n)
                tag = f"{info.registry_host}/bench/plain:p{n}"
                plain.append(_plain_build(info.docker_host, repo, base, tag))
    finally:
        info.stop()
        shutil.rmtree(work, ignore_errors=True)

    warm_s, plain_s = statistics.median(warm), statistics.median(plain)
    figures = {
        "cold_build_s": round(cold, 2),
        "warm_release_build_s": round(warm_s, 2),
        "hit_rate": round(statistics.median(rates), 4),
        "plain_build_s": round(plain_s, 2),
        "speedup_vs_plain": round(plain_s / warm_s, 2),
        "warm_runs_s": [round(x, 2) for x in warm],
        "plain_runs_s": [round(x, 2) for x in plain],
        "hit_rates": rates,
        "backend": "docker (prefect-docker DockerHost: the sandbox's dockerd)",
        "goal": {"speedup_vs_plain": 3},
        "load_average": round(os.getloadavg()[0], 2),
    }
    print_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
