"""The package as a worker installs it: a wheel built from this tree, installed without the
`sandbox` extra into a fresh venv outside the checkout, imports every flow, finds its canary
sample, and runs a dry-run release against the session's sandbox (started from the test venv).

The wheel is one import namespace, `shipyard` (the top-level folders flows/, tasks/, blocks/,
deployments/ are mapped under it): nothing else at its top level, `import flows` fails in its
venv, and nothing of the checkout-only sandbox is in it, so `shipyard sandbox up` from the wheel
says in one line that the sandbox comes with a checkout.

The fresh venv is pinned to the test venv's versions and filled from uv's cache, so it costs
seconds, not a download.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Everything of the tree but what is not source (the sdist decides what ships). `build` and
# `dist` only at the top: flows/build/ is source.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", ".*_cache", "__pycache__", "*.pyc", "*.egg-info", ".shipyard"
)


def NOT_SOURCE(directory: str, names: list[str]) -> set[str]:
    ignored = set(_NOT_SOURCE(directory, names))
    if Path(directory).resolve() == REPO:
        ignored |= {"build", "dist"} & set(names)
    return ignored


SANDBOX_ONLY = {"bcrypt", "python-multipart"}  # the `sandbox` extra beyond what prefect brings

CHECK = r"""
import importlib, importlib.metadata as md, importlib.util, json, pkgutil, sys
from pathlib import Path

import shipyard.flows as flows
from prefect.flows import Flow

site = Path(sys.prefix)
assert Path(flows.__file__).resolve().is_relative_to(site), flows.__file__  # not the checkout
found = []
for info in pkgutil.walk_packages(flows.__path__, prefix="shipyard.flows."):
    module = importlib.import_module(info.name)
    found += [v.name for v in vars(module).values() if isinstance(v, Flow)]
import shipyard.deployments.cli.main  # the CLI's entry point imports too

from shipyard.blocks.release_target import CanaryPolicy
from shipyard.tasks.canary_probe import load_sample

sample = load_sample(CanaryPolicy().sample_path())
missing = []
for dist in ("bcrypt", "python-multipart"):
    try:
        md.distribution(dist)
    except md.PackageNotFoundError:
        missing.append(dist)
from shipyard.deployments.serve import PREFECT_YAML, read_specs

assert PREFECT_YAML.resolve().is_relative_to(site), PREFECT_YAML  # not the checkout
served = [spec.name for spec in read_specs(PREFECT_YAML)]
# One namespace: the checkout's top-level names do not import here (`import flows` fails).
importable = []
for name in ('flows', 'tasks', 'blocks', 'deployments', 'sandbox', 'bench'):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        continue
    importable.append(name)
top_level = (md.distribution("shipyard").read_text("top_level.txt") or "").split()
report = {
    "flows": sorted(found),
    "sample": list(sample.size),
    "missing": missing,
    "served": served,
    "importable": importable,
    "top_level": top_level,
}
Path(sys.argv[1]).write_text(json.dumps(report))

# Then the console script's own entry point, in this process (one interpreter start: a fresh
# venv compiles every import once, ~8 s).
shipyard.deployments.cli.main.app(sys.argv[2:], prog_name="shipyard")
"""


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{args[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@dataclass(frozen=True)
class Installed:
    wheel: Path  # the wheel file built from this tree
    bin: Path  # bin/ of the fresh venv it is installed in


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory) -> Installed:
    """The wheel built from this tree, and bin/ of a fresh venv holding it without the sandbox
    extra."""
    uv = shutil.which("uv")
    assert uv, "uv is not on PATH: `make setup` installs it"
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    _run([uv, "build", "--quiet", "--out-dir", str(work / "dist"), str(source)], cwd=work)
    (wheel,) = (work / "dist").glob("shipyard-*.whl")
    # The test venv's versions as constraints: the same, already cached, packages.
    frozen = _run([uv, "pip", "freeze", "--python", sys.executable], cwd=work).stdout
    pins = [
        line
        for line in frozen.splitlines()
        if "==" in line and line.split("==")[0].lower() not in {"shipyard", *SANDBOX_ONLY}
    ]
    (work / "constraints.txt").write_text("\n".join(pins) + "\n")
    venv = work / "venv"
    _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], cwd=work)
    python = str(venv / "bin" / "python")
    constraints = str(work / "constraints.txt")
    _run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            python,
            "--constraint",
            constraints,
            str(wheel),
        ],
        cwd=work,
    )
    return Installed(wheel=wheel, bin=venv / "bin")


def _env(tmp_path: Path) -> dict[str, str]:
    """This session's Prefect server and sandbox; nothing of the checkout on the path."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        PREFECT_HOME=str(tmp_path / "prefect"),
        SHIPYARD_HOME=str(tmp_path / "shipyard"),
    )
    return env


def test_installed_wheel_imports_every_flow_and_dry_runs_a_release(
    installed_wheel, stage, make_target, sandbox, tmp_path
):
    stage("default")
    target = make_target()
    target.save(target.service, overwrite=True)
    report_path = tmp_path / "report.json"
    release = ["release", "v1.2.3", "--target", target.service, "--dry-run", "--json"]

    out = _run(
        [
            str(installed_wheel.bin / "python"),
            "-c",
            CHECK,
            str(report_path),
            *release,
            "--image",
            "x:1",
        ],
        cwd=tmp_path,
        env=_env(tmp_path),
    )

    assert (installed_wheel.bin / "shipyard").is_file()  # the console script is installed
    report = json.loads(report_path.read_text())
    assert {"release", "prewarm-cache-tiers", "mirror_base_image", "build-release-image"} <= set(
        report["flows"]
    )
    assert report["sample"] == [384, 191]  # the packaged page, read without a checkout
    assert {"release", "prewarm-cache", "mirror-base"} <= set(report["served"])  # `shipyard serve`
    assert sorted(report["missing"]) == sorted(SANDBOX_ONLY)  # not runtime dependencies
    assert report["top_level"] == ["shipyard"]  # the installed dist-info's top_level.txt
    assert report["importable"] == []  # `import flows` (tasks, blocks, ...) fails
    data = json.loads(out.stdout)
    assert data["outcome"] == "planned" and data["dry_run"] is True
    assert data["plan"]["revision"] == f"{target.service}-v1-2-3"


def test_the_wheel_is_one_namespace_without_the_sandbox(installed_wheel):
    with zipfile.ZipFile(installed_wheel.wheel) as wheel:
        names = wheel.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert wheel.read(top_level).decode().split() == ["shipyard"]
    packages = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert packages == {"shipyard"}
    # Under shipyard/ only the four mapped packages (it has no __init__.py of its own).
    assert {n.split("/")[1] for n in names if n.startswith("shipyard/")} == {
        "flows",
        "tasks",
        "blocks",
        "deployments",
    }
    # Nothing of the checkout-only sandbox (nor the benches): no such folder at any depth, no
    # scenario file; the one YAML file is the served deployments' prefect.yaml.
    folders = {part for n in names for part in n.split("/")[:-1]}
    assert not {"sandbox", "bench", "scenarios"} & folders, sorted(folders)
    data_files = [n for n in names if n.endswith((".yaml", ".yml", ".toml"))]
    assert data_files == ["shipyard/deployments/prefect.yaml"], data_files


def test_sandbox_up_from_the_wheel_says_it_comes_with_a_checkout(installed_wheel, tmp_path):
    from shipyard.deployments.cli.sandbox import SANDBOX_NEEDS_CHECKOUT

    proc = subprocess.run(
        [str(installed_wheel.bin / "shipyard"), "sandbox", "up"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    expected = "error: " + SANDBOX_NEEDS_CHECKOUT.format(command="sandbox up")
    assert lines == [expected], output
