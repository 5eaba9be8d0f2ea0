"""Rehearsal bench: a team's own inference service from `shipyard init` to a released revision on
the sandbox's real containers, the way README's "Rehearse your own service" says, every step a
`shipyard` command in a subprocess.

The service is examples/digit-service (Flask behind gunicorn, `POST /guess` multipart `image` ->
`{"digit": N, "score": P}` from an ONNX model on onnxruntime), copied into a git repository of
its own. The run: `shipyard sandbox up` (a fresh $SHIPYARD_HOME: its own registry, Docker daemon
and build cache), a fresh `prefect server start`, then, timed from `init` on:

    shipyard init --sample samples/seven.png --path /guess --form image \
        --expect-content-type application/json --expect-json digit=7
    shipyard prewarm                     # the base and python tiers: pip installs onnxruntime...
    git tag v1.0.0 && shipyard release v1.0.0
    (a code change: app.py) git commit && git tag v1.0.1 && shipyard release v1.0.1

Figures (one JSON object with --json):
- minutes_repo_to_release: `init` to v1.0.0 released (goal <= 10);
- first_build_s: the first image, as the user waits for it: the first prewarm's tier builds plus
  the v1.0.0 release's build (with `prewarm_s` and `release_build_s`, its two parts);
- code_change_build_s, code_change_hit_rate: the v1.0.1 build (goal: >= 80 % of its steps
  CACHED), with its CACHED/RUN counts;
- release_s: each release's wall time (the `shipyard release` process), and what was warm.

"A warm machine" here: Shipyard installed (`make setup`) and the base root filesystem built
(`make rootfs`, $SHIPYARD_ROOTFS_CACHE); nothing of the service: its pip installs, its tiers and
its image are built from nothing in a fresh sandbox. `--home DIR` keeps a sandbox home instead
(its registry and daemon cache: a second run with the same DIR finds the tiers built).

The bench fails (exit 1, `"failed"` in the JSON) when a step did not do what it must: init or
prewarm exiting non-zero, a release not `released`, the canary not passed.

With --breakages, the four breakages of tests/runtime/test_rehearse_own_service.py follow, each
released under its own tag: outcome, seconds and reasons (README quotes them).

Usage: python bench/rehearse.py --json [--home DIR] [--keep-repo] [--breakages]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parents[1]
SERVICE_TEMPLATE = CHECKOUT / "examples" / "digit-service"
SAMPLE = "samples/seven.png"
EXPECTED_DIGIT = 7
# The request a user gives init: the sample, where it goes, as which form field, and the answer.
INIT_ARGS = [
    *("--sample", SAMPLE, "--path", "/guess", "--form", "image"),
    *("--expect-content-type", "application/json", "--expect-json", f"digit={EXPECTED_DIGIT}"),
]
CLI_TIMEOUT_S = 1800.0  # one command: a first prewarm on a loaded machine takes minutes
_GIT = ["git", "-c", "user.email=rehearsal@shipyard.invalid", "-c", "user.name=rehearsal"]


# ---------------------------------------------------------------- the service's repository


class ServiceRepo:
    """The service's own git repository: examples/digit-service copied, committed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        shutil.copytree(
            SERVICE_TEMPLATE, root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        self.git("init", "-q", "-b", "main")
        self.commit("the digit service")

    def git(self, *args: str) -> str:
        out = subprocess.run(
            [*_GIT, "-C", str(self.root), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout.strip()

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        return self.git("rev-parse", "HEAD")

    def tag(self, tag: str) -> None:
        self.git("tag", tag)

    @property
    def app(self) -> Path:
        return self.root / "app.py"

    def change_app(self, change: Callable[[str], str], message: str) -> str:
        """Commit app.py changed by `change` (from the template's app.py, so changes never
        pile up); returns the commit."""
        self.app.write_text(change((SERVICE_TEMPLATE / "app.py").read_text()))
        return self.commit(message)


def replaced(text: str, old: str, new: str) -> str:
    """`text` with `old` replaced once; the template must hold `old` (else the change is a
    no-op and the rehearsal would prove nothing)."""
    if text.count(old) != 1:
        raise ValueError(f"app.py of {SERVICE_TEMPLATE} no longer holds {old!r} exactly once")
    return text.replace(old, new)


def harmless_change(text: str) -> str:
    """A code change that keeps every answer: what `code_change_*` measures."""
    return replaced(
        text,
        '    log.info("guess %s (score %s) for %s", digit, score, upload.filename)\n',
        '    log.info("guess %s (score %s) for %s, %d B", digit, score, upload.filename, '
        "batch.size)\n",
    )


# The four ways a team breaks its service (each a commit on the good code):
def missing_dependency(text: str) -> str:
    """scipy used to centre the digit, and not added to requirements.txt."""
    text = replaced(text, "import numpy as np\n", "import numpy as np\nfrom scipy import ndimage\n")
    return replaced(
        text,
        "    return ink.reshape(1, SIDE * SIDE)\n",
        "    ink = ndimage.shift(ink, np.subtract(ink.shape, 1) / 2 - ndimage.center_of_mass(ink))\n"
        "    return ink.reshape(1, SIDE * SIDE)\n",
    )


def handler_500(text: str) -> str:
    """Pictures resized for a 28x28 model that was never trained: onnxruntime refuses the
    input, Flask answers 500."""
    return replaced(text, "SIDE = 16\n", "SIDE = 28  # the new model's input\n")


def wrong_answer(text: str) -> str:
    """The ink inversion dropped in a refactoring: the model reads paper as ink, answers 200
    with a wrong digit."""
    return replaced(
        text,
        "    ink = 1.0 - np.asarray(grey, dtype=np.float32) / 255.0\n",
        "    ink = np.asarray(grey, dtype=np.float32) / 255.0\n",
    )


def slow_start(seconds: float) -> Callable[[str], str]:
    """The model warmed up for `seconds` before the server listens (gunicorn --preload)."""

    def change(text: str) -> str:
        return replaced(
            text,
            'log.info("model %s loaded',
            f"import time\n\ntime.sleep({seconds:g})  # warm-up: caches, first batches\n"
            'log.info("model %s loaded',
        )

    return change


# ---------------------------------------------------------------- the CLI, as a user runs it


@dataclass
class Cli:
    """`shipyard ...` in a subprocess, with the environment a user's shell has."""

    env: dict[str, str]
    cwd: Path
    log: list[dict[str, Any]] = field(default_factory=list)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(Path(sys.executable).with_name("shipyard")), *args]
        started = time.perf_counter()
        done = subprocess.run(
            command,
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
        seconds = round(time.perf_counter() - started, 1)
        self.log.append({"command": " ".join(args[:2]), "rc": done.returncode, "s": seconds})
        if check and done.returncode != 0:
            raise StepFailed(
                f"`shipyard {' '.join(args)}` exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def json(self, *args: str) -> dict[str, Any]:
        """Run a `--json` command; its stdout is one JSON object (exit code not checked)."""
        done = self.run(*args, "--json", check=False)
        try:
            data: dict[str, Any] = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise StepFailed(
                f"`shipyard {' '.join(args)} --json` exited {done.returncode} without JSON:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            ) from None
        return data

    def release(self, tag: str) -> dict[str, Any]:
        return self.json("release", tag)


class StepFailed(RuntimeError):
    """A rehearsal step did not do what it must."""


def sandbox_env(home: Path) -> dict[str, str]:
    """The environment of a user's shell for the sandbox in `home` (before `sandbox up`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["SHIPYARD_HOME"] = str(home)
    env.setdefault("SHIPYARD_ROOTFS_CACHE", str(Path.home() / ".cache" / "shipyard" / "rootfs"))
    env["COLUMNS"] = "200"  # rich wraps at 80 in a pipe: keep each line whole for the reader
    return env


def exports(output: str) -> dict[str, str]:
    """The `export KEY=VALUE` lines `shipyard sandbox up` prints."""
    return dict(re.findall(r"export (\w+)=(\S+)", output))


# ---------------------------------------------------------------- the bench


def rehearse(home: Path, work: Path, breakages: bool = False) -> dict[str, Any]:
    from shipyard.deployments.demo.prefect_server import prefect_server

    env = sandbox_env(home)
    figures: dict[str, Any] = {"home": str(home), "failed": None}
    cli = Cli(env, work)
    up = cli.run("sandbox", "up", "--registry-port", "0", "--emulator-port", "0")
    try:
        env.update(exports(up.stdout))
        if "docker " not in up.stdout:
            raise StepFailed(f"the sandbox runs in-process, not on containers:\n{up.stdout}")
        with prefect_server() as server:
            env["PREFECT_API_URL"] = server.wait()
            figures.update(_the_rehearsal(cli, work, breakages))
    except StepFailed as exc:
        figures["failed"] = str(exc)
    finally:
        cli.run("sandbox", "down", check=False)
        figures["commands"] = cli.log
    return figures


# The slow start: the old code waited for a new revision's Ready `ready_timeout_s` and no longer
# (the sandbox target set it to 60 s: `git show 01903a3:deployments/demo/run.py`), whatever the
# startup probe allowed, so a service taking 90 s to listen under a 240 s probe was rolled back.
# Scaled down: the same setting at 10 s, a probe of 90 s, and a start of SLOW_START_S between.
SLOW_START_S = 25
SLOW_START_TARGET = {"ready_timeout_s": 10, "startup_probe_s": 90}

# The four breakages README shows, in order, each a commit on the good code, with what their
# release must end as. The slow start needs the target's probe and the old wait (see
# SLOW_START_TARGET); the bench sets them as a user would in the target's form.
BREAKAGES: list[tuple[str, Callable[[str], str], str]] = [
    ("missing_dependency", missing_dependency, "rolled_back"),
    ("handler_500", handler_500, "rolled_back"),
    ("wrong_answer", wrong_answer, "rolled_back"),
    ("slow_start", slow_start(SLOW_START_S), "released"),
]


def set_slow_start_target(env: dict[str, str]) -> None:
    """The `default` target with SLOW_START_TARGET, saved on the Prefect API in `env` (what a
    user edits in the target's form in the UI)."""
    code = (
        "from shipyard.blocks.release_target import ReleaseTarget as T\n"
        "t = T.load('default')\n"
        f"t.ready_timeout_s = {SLOW_START_TARGET['ready_timeout_s']}\n"
        "t.gpu_template = t.gpu_template.model_copy(update={'startup_probe_s': "
        f"{SLOW_START_TARGET['startup_probe_s']}}})\n"
        "t.save('default', overwrite=True)\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


def _breakages(cli: Cli, repo: ServiceRepo) -> list[dict[str, Any]]:
    """Each breakage released under its own tag: its outcome, wall time and reasons."""
    out = []
    for patch, (name, change, expected) in enumerate(BREAKAGES, start=2):
        if name == "slow_start":
            set_slow_start_target(cli.env)
        repo.change_app(change, name)
        tag = f"v1.0.{patch}"
        repo.tag(tag)
        started = time.perf_counter()
        result = cli.release(tag)
        row = {
            "case": name,
            "tag": tag,
            "outcome": result.get("outcome"),
            "expected": expected,
            "s": round(time.perf_counter() - started, 1),
            "reasons": result.get("reasons") or [],
        }
        out.append(row)
        if row["outcome"] != expected:
            raise StepFailed(f"{name} ({tag}): {row['outcome']}, expected {expected}: {row}")
    return out


def _the_rehearsal(cli: Cli, work: Path, breakages: bool = False) -> dict[str, Any]:
    repo = ServiceRepo(work / "digit-service")
    cli.cwd = repo.root
    started = time.perf_counter()
    cli.run("init", *INIT_ARGS)
    prewarm = cli.json("prewarm")
    prewarm_s = sum(t.get("seconds", 0.0) for t in prewarm.get("tiers", []))
    if [t["action"] for t in prewarm.get("tiers", [])] != ["built", "built"]:
        raise StepFailed(f"the first prewarm did not build base and python: {prewarm}")
    repo.tag("v1.0.0")
    first = _released(cli, "v1.0.0")
    to_release_s = time.perf_counter() - started
    repo.change_app(harmless_change, "log the picture's size")
    repo.tag("v1.0.1")
    second = _released(cli, "v1.0.1")
    build = second["build"]
    broken = _breakages(cli, repo) if breakages else []
    return {
        "breakages": broken,
        "minutes_repo_to_release": round(to_release_s / 60, 2),
        "first_build_s": round(prewarm_s + first["build"]["seconds"], 1),
        "prewarm_s": round(prewarm_s, 1),
        "release_build_s": round(first["build"]["seconds"], 1),
        "code_change_build_s": round(build["seconds"], 1),
        "code_change_hit_rate": round(build["hit_rate"], 3),
        "code_change_steps": {"CACHED": build["cached_steps"], "RUN": build["run_steps"]},
        "release_s": {"v1.0.0": first["seconds"], "v1.0.1": second["seconds"]},
        "canary": second["canary"],
        "warm": "rootfs cache only (fresh sandbox home: registry, daemon and pip all cold)",
    }


def _released(cli: Cli, tag: str) -> dict[str, Any]:
    result = cli.release(tag)
    if result.get("outcome") != "released" or not (result.get("canary") or {}).get("passed"):
        raise StepFailed(
            f"release {tag}: {result.get('outcome')}: {'; '.join(result.get('reasons') or [])}"
        )
    if not result.get("build") or result["build"].get("reused"):
        raise StepFailed(f"release {tag} built nothing: {result.get('build')}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--home", type=Path, help="keep the sandbox home here (default: fresh)")
    parser.add_argument("--keep-repo", action="store_true", help="leave the service repo")
    parser.add_argument(
        "--breakages", action="store_true", help="then release the four breakages (README)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shipyard-rehearse-"))
    home = args.home or work / "home"
    try:
        figures = rehearse(home.resolve(), work, args.breakages)
    finally:
        if not args.keep_repo:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key}: {value}")
    return 1 if figures["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
