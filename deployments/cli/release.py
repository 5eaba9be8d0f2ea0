"""`shipyard release TAG` and `shipyard demo`: the GPU release, for real or on a fresh sandbox."""

from __future__ import annotations

import json
import logging
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()


def register(app: typer.Typer) -> None:
    app.command("release")(release_command)
    app.command("demo")(demo_command)


def release_command(
    tag: str = typer.Argument(..., help="Git tag to release, e.g. v1.2.3"),
    target: str = typer.Option("default", "--target", help="ReleaseTarget block name."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Plan only: change nothing."),
    image: str = typer.Option(None, "--image", help="Release this image instead of building."),
    commit: str = typer.Option(None, "--commit", help="Commit to build (default: the tag)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Release TAG: build, GPU deploy with region fallback, canary, cutover or rollback."""
    import sys

    from shipyard.deployments.cli.errors import (
        UsageError,
        fail,
        flow_output,
        preflight_release,
        release_failure,
        verbose_requested,
    )

    try:
        block = preflight_release(tag, target)
    except UsageError as exc:
        fail(str(exc))
    from shipyard.flows.release.flow import run_release  # after the checks: it imports a lot

    # The run's log lines: progress on stdout (none with --json), its tracebacks only in the
    # run's log on the server (and on stderr with --verbose); stderr: the one error line.
    try:
        with flow_output(verbose_requested(), None if as_json else sys.stdout):
            result = run_release(tag, target, dry_run=dry_run, image=image, commit=commit)
    except Exception as exc:  # whatever ended the run: one line naming the fix (re-raised with -v)
        if verbose_requested():
            raise
        fail(release_failure(exc, block, tag), code=1)
    data = result.model_dump(mode="json")
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        print_summary(data)
    raise typer.Exit(0 if result.outcome in ("released", "planned") else 3)


def demo_command(
    scenario: str = typer.Option(
        "default", "--scenario", "-s", help="Scenario name (sandbox/scenarios/) or file."
    ),
    tag: str = typer.Option("v1.0.0", "--tag", help="Git tag the demo releases."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    verbose: bool = typer.Option(False, "--verbose", help="Show Prefect's logs too."),
    engine: bool = typer.Option(
        True,
        "--engine/--no-engine",
        help="Build and run containers on the sandbox's own Docker daemon (as root with "
        "docker.io); --no-engine, or where it cannot start: in-process stand-ins.",
    ),
    fresh: bool = typer.Option(
        False,
        "--fresh",
        help="Throw away what earlier demos kept in $SHIPYARD_HOME/demo (the registry's "
        "storage, the Docker daemon's data root and build cache) and run cold. Kept otherwise: "
        "a second run skips the prewarmed tiers and finds its build cached. The base root "
        "filesystem cache ($SHIPYARD_ROOTFS_CACHE) stays; the Prefect server is fresh each run.",
    ),
) -> None:
    """The whole pipeline end to end on a local sandbox (fresh emulator state, kept registry and
    build cache unless --fresh): quota 0 and denied in europe-west1, granted in us-central1
    after two polls, canary on a real page, cutover."""
    import prefect.main  # noqa: F401 - configures Prefect's logging now: the levels below stick

    from shipyard.deployments.cli.sandbox import require_sandbox

    require_sandbox("demo")
    from sandbox.scenario import ScenarioError
    from shipyard.deployments.demo.run import DemoError, run_demo
    from shipyard.tasks.errors import PermanentError

    loggers = [logging.getLogger(n) for n in ("prefect", "prefect.flow_runs", "prefect.task_runs")]
    levels = [logger.level for logger in loggers]
    if not verbose:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
    # Progress goes to stderr with --json, so stdout stays one JSON object.
    out = Console(stderr=True) if as_json else console
    try:
        out.print(
            f"the full pipeline on a local sandbox, scenario [bold]{scenario}[/] (fresh emulator state)"
        )
        data = run_demo(
            scenario,
            tag,
            progress=lambda line: out.print("  " + escape(line)),
            engine=engine,
            fresh=fresh,
        )
    except (ScenarioError, DemoError) as exc:
        out.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    except PermanentError as exc:
        out.print(f"[red]demo failed:[/] {escape(str(exc))}")
        raise typer.Exit(3) from None
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    if as_json:
        data.pop("traffic_history", None)
        typer.echo(json.dumps(data, indent=2))
    else:
        print_pipeline(data)
        print_summary(data)
        print_history(data.get("traffic_history", []))
        ok = data["invariants_ok"]
        console.print(
            "invariants over the traffic history: "
            + ("[green]all hold[/]" if ok else "[red]" + "; ".join(data["invariant_violations"]))
        )
    raise typer.Exit(0 if data["invariants_ok"] else 4)


# ---------------------------------------------------------------- rendering


_COLOURS = {
    "released": "green",
    "planned": "cyan",
    "cpu_fallback": "yellow",
    "rolled_back": "red",
}


def print_pipeline(data: dict[str, Any]) -> None:
    """The demo's stages before the release: mirror, prewarm, build."""
    m = data["mirror"]
    same = m["digest"] == m["upstream_digest"] == m["destination_digest"]
    console.print(
        f"\nmirror    {m['source']} -> {m['destination']}: {m['status']}, "
        f"{m['digest']} ({'same digest on both sides' if same else '[red]digests differ[/]'}), "
        f"CUDA {m['cuda']}, cuDNN {m['cudnn']}"
    )
    p = data["prewarm"]
    console.print(
        f"prewarm   {p['quarter']}: built {', '.join(p['built']) or '-'}; "
        f"skipped {', '.join(p['skipped']) or '-'}"
    )
    b = data.get("build")
    if b:
        how = "reused (nothing built)" if b["reused"] else f"Cloud Build {b['build_id']}"
        console.print(
            f"build     {b['image']} of {b['commit'][:12]}: {how}, CACHED {b['cached_steps']} / "
            f"RUN {b['run_steps']} (hit rate {b['hit_rate']:.0%}), {b['seconds']:.1f} s"
        )
    stages = ", ".join(f"{k} {v:.1f}" for k, v in data.get("stages", {}).items())
    load = data.get("load_avg_1m") or {}
    console.print(
        f"stages    {stages}; wall {data.get('wall_s', 0):.1f} s "
        f"(load average {load.get('start', '?')} at start, {load.get('end', '?')} at the end)"
    )
    kept = data.get("kept_state") or {}
    if kept.get("dir"):
        reused = "; ".join(kept.get("reused") or []) or "nothing (a cold run)"
        console.print(f"reused    {reused} [dim](kept in {kept['dir']}; --fresh drops it)[/]")
    if data.get("sandbox_mode"):
        note = f" ({data['sandbox_mode_note']})" if data.get("sandbox_mode_note") else ""
        console.print(f"sandbox   {data['sandbox_mode']}{note}")


def print_summary(data: dict[str, Any]) -> None:
    outcome = data["outcome"]
    colour = _COLOURS.get(outcome, "white")
    head = f"[bold {colour}]{outcome.replace('_', ' ')}[/]"
    if data.get("noop"):
        head += " (already serving: nothing to do)"
    console.print(f"\nrelease {data['git_tag']} of [bold]{data['service']}[/]: {head}")
    where = data.get("region") or "-"
    if data.get("outside_primary"):
        where += f" [yellow](not the primary {data['primary_region']})[/]"
    console.print(f"  region    {where}")
    console.print(f"  revision  {data.get('revision') or '-'}")
    console.print(f"  url       {data.get('url') or '-'}")
    if data.get("serving_url_variable"):
        console.print(f"  published Prefect Variable {data['serving_url_variable']}")
    canary = data.get("canary")
    if canary:
        verdict = "[green]passed[/]" if canary["passed"] else "[red]failed[/]"
        speed = f"{canary['speedup']:.0%}" if canary.get("speedup") is not None else "-"
        console.print(
            f"  canary    {verdict}: {canary['runs']} runs, p50 {canary['p50_ms']} ms, "
            f"p95 {canary['p95_ms']} ms, fallback used: {canary['fallback_used']}, "
            f"speed-up {speed} vs CPU {canary['baseline_ms']} ms ({canary['baseline_source']})"
        )
    for region, what in (data.get("regions_tried") or {}).items():
        console.print(f"  tried     {region}: {what}")
    for pref in data.get("preferences") or []:
        console.print(
            f"  quota     {pref['preference_id']}: {pref['state']} "
            f"(granted {pref['granted_value']}, {pref['polls']} polls)"
        )
    for reason in data.get("reasons") or []:
        console.print(f"  reason    {escape(reason)}")
    plan = data.get("plan")
    if plan:
        console.print(f"  plan      {plan['note']}")
        for q in plan.get("quotas", []):
            console.print(
                f"            {q['region']}: GPU {q['gpu']}, CPU {q['cpu']}, "
                f"memory {q['memory_gib']} GiB: {q['why']}"
            )
        if plan.get("quota_preferences"):
            console.print(f"            would file: {', '.join(plan['quota_preferences'])}")
    table = Table(title="steps", show_edge=False)
    for column in ("step", "state", "seconds", "attempts", "detail"):
        table.add_column(column, overflow="fold")
    for step in data.get("steps", []):
        state = step["state"]
        style = {"completed": "green", "failed": "red"}.get(state, "dim")
        table.add_row(
            step["name"],
            f"[{style}]{state}[/]",
            f"{step['seconds']:.3f}",
            str(step["attempts"]),
            escape((step.get("detail") or "")[:80]),
        )
    console.print(table)
    console.print(f"  total {data.get('seconds', 0):.2f} s")


def print_history(history: list[dict[str, Any]]) -> None:
    if not history:
        return
    table = Table(title="traffic history (sandbox)", show_edge=False)
    for column in ("#", "service", "event", "traffic"):
        table.add_column(column, overflow="fold")
    for h in history:
        region = h["service"].split("/")[3]
        split = ", ".join(
            f"{t['revision']} {t['percent']}%" + (f" [{t['tag']}]" if t["tag"] else "")
            for t in h["traffic"]
        )
        table.add_row(str(h["seq"]), region, h["event"], escape(split))
    console.print(table)
