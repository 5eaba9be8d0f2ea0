"""Running the `shipyard` CLI in the test process, as a user's shell would (its exit code and
everything it printed)."""

from __future__ import annotations

import pytest

from shipyard.deployments.cli.main import main


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr("sys.argv", ["shipyard", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out + captured.err
