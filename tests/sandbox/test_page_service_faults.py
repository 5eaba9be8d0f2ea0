"""The sample page service acts on the startup faults the sandbox gives a container in
`PAGE_FAULTS` (sandbox/engine/revision_instances.py), as the in-process emulator plays them:
`missing_dependency:MODULE` and `slow_start:N` (sandbox/scenario.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

APP_DIR = Path(__file__).resolve().parents[2] / "examples" / "page-service" / "app"


def _page_module():
    spec = importlib.util.spec_from_file_location("page_service_main_faults", APP_DIR / "main.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_a_missing_dependency_prints_its_traceback_and_exits_1():
    """As the container runs it (`uvicorn main:app`): the import fails before it listens."""
    env = {"PAGE_FAULTS": "missing_dependency:shipyard_absent_module", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", "0"],
        cwd=APP_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback (most recent call last):" in done.stderr
    assert "ModuleNotFoundError: No module named 'shipyard_absent_module'" in done.stderr


def test_startup_faults_are_read_with_their_arguments():
    main = _page_module()
    settings = main.Settings.from_env(
        {"PAGE_FAULTS": "http_503:2,slow_start:1.5,missing_dependency"}
    )
    assert settings.faults == {"http_503": 2}
    assert settings.start_delay_s == 1.5
    assert settings.missing_module == "onnxruntime"  # the scenario's default module
    with pytest.raises(ValueError, match=r"slow_start:'soon' needs a number"):
        main.Settings.from_env({"PAGE_FAULTS": "slow_start:soon"})


def test_a_slow_start_loads_before_the_app_exists():
    main = _page_module()
    lines: list[str] = []
    settings = main.Settings(start_delay_s=0.01, log=lambda severity, text: lines.append(text))
    main.create_app(settings)
    assert lines[0] == "loading the page model (0.01 s) before listening"
    assert lines[-1].startswith("page service starting")


def test_container_lines_are_stored_as_cloud_run_stores_them():
    """A plain stderr line has no severity (DEFAULT, textPayload); a JSON line is structured."""
    from sandbox.emulator.logging_api import container_line

    assert container_line("Traceback (most recent call last):") == (
        "DEFAULT",
        "Traceback (most recent call last):",
        None,
    )
    assert container_line('{"severity": "error", "message": "boom"}') == (
        "ERROR",
        None,
        {"message": "boom"},
    )
    assert container_line('{"message": "plain"}') == ("DEFAULT", None, {"message": "plain"})
    assert container_line("[1, 2]") == ("DEFAULT", "[1, 2]", None)
