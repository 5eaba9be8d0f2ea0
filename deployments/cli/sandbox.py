"""`shipyard sandbox up|down|status`: the local cloud on loopback."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from shipyard.deployments.cli.errors import fail

# The sandbox is the local cloud of a Shipyard checkout, not part of the installed package:
# each command imports it when it runs, so the rest of the CLI works from a wheel.
SANDBOX_NEEDS_CHECKOUT = (
    "the sandbox (the local cloud) comes with a Shipyard checkout, not with the installed "
    "package: clone the repository, run `make setup` there, then `.venv/bin/shipyard {command}`"
)
REGISTRY_PORT_ENV = "SHIPYARD_SANDBOX_REGISTRY_PORT"
EMULATOR_PORT_ENV = "SHIPYARD_SANDBOX_EMULATOR_PORT"

console = Console()


def require_sandbox(command: str) -> None:
    """Fail with the fix (one line, exit 2) when the checkout's `sandbox` package is absent."""
    import importlib.util

    try:  # find_spec imports the parent package: absent, it raises instead of answering None
        found = importlib.util.find_spec("sandbox.manager") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        fail(SANDBOX_NEEDS_CHECKOUT.format(command=command))


sandbox_app = typer.Typer(
    help="The sandbox: a real OCI registry and a Google Cloud API emulator on loopback.",
    no_args_is_help=True,
)


@sandbox_app.command("up")
def up(
    scenario: str = typer.Option(
        None,
        "--scenario",
        "-s",
        help="Scenario file, or a name from sandbox/scenarios/ (default: healthy).",
    ),
    registry_url: str = typer.Option(
        None,
        "--registry-url",
        help="Use this existing registry instead of starting docker-registry.",
    ),
    registry_port: int = typer.Option(
        None,
        "--registry-port",
        help=f"Registry port (default: {REGISTRY_PORT_ENV}, else 47500); 0: any free port.",
    ),
    emulator_port: int = typer.Option(
        None,
        "--emulator-port",
        help=f"Emulator port (default: {EMULATOR_PORT_ENV}, else 47501); 0: any free port.",
    ),
) -> None:
    """Start the sandbox and print the environment that points Shipyard at it."""
    require_sandbox("sandbox up")
    from sandbox.manager import default_ports, read_info, save_info, start_sandbox
    from sandbox.registry import RegistryBinaryMissing
    from sandbox.scenario import ScenarioError

    existing = read_info()
    if existing and any(existing.alive().values()):
        console.print(
            f"[yellow]a sandbox already runs[/] at {existing.emulator_url}: `shipyard sandbox down` first"
        )
        raise typer.Exit(1)
    try:
        default_registry, default_emulator = default_ports()
        info = start_sandbox(
            scenario=scenario,
            registry_url=registry_url,
            engine=True,
            registry_port=default_registry if registry_port is None else registry_port,
            emulator_port=default_emulator if emulator_port is None else emulator_port,
        )
    except (RegistryBinaryMissing, ScenarioError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    path = save_info(info)
    console.print(f"sandbox up in {info.startup_s:.2f} s (state in {path})")
    console.print(f"  emulator  {info.emulator_url}")
    console.print(f"  registry  {info.registry_url}")
    if info.docker_host:
        console.print(f"  docker    {info.docker_host} (builds and revisions run in containers)")
    else:
        console.print(f"  mode      in-process: {info.mode_note}")
    for note in info.port_notes:
        console.print(f"[yellow]{note}[/]")
    console.print("point Shipyard at it:")
    for key, value in info.env().items():
        console.print(f"  export {key}={value}")


@sandbox_app.command("down")
def down() -> None:
    """Stop everything `sandbox up` started, by PID."""
    require_sandbox("sandbox down")
    from sandbox.manager import stop_sandbox

    stopped = stop_sandbox()
    console.print("stopped: " + ", ".join(stopped) if stopped else "no sandbox was running")


@sandbox_app.command("status")
def status() -> None:
    """Show what runs and where."""
    require_sandbox("sandbox status")
    from sandbox.manager import read_info

    info = read_info()
    if info is None:
        console.print("no sandbox (start one with `shipyard sandbox up`)")
        raise typer.Exit(1)
    table = Table("part", "pid", "running", "url")
    alive = info.alive()
    urls = {
        "registry": info.registry_url,
        "emulator": info.emulator_url,
        "dockerd": info.docker_host or "",
    }
    for name, pid in info.pids.items():
        table.add_row(name, str(pid), "yes" if alive[name] else "NO", urls.get(name, ""))
    console.print(table)
    console.print(f"scenario: {Path(info.scenario).stem if info.scenario else 'healthy'}")
    console.print(f"mode: {info.mode}{' (' + info.mode_note + ')' if info.mode_note else ''}")


def register(app: typer.Typer) -> None:
    app.add_typer(sandbox_app, name="sandbox")
