"""Which stages a build needs: the `--target` and its FROM / COPY --from dependencies, in order."""

from __future__ import annotations

from sandbox.buildkit.build_state import BuildFailed
from sandbox.buildkit.dockerfile import Dockerfile, Stage, arg_declarations, expand


def stage_args(dockerfile: Dockerfile) -> set[str]:
    """Names declared by ARG inside stages (a build arg consumed there is not 'unused')."""
    names: set[str] = set()
    for stage in dockerfile.stages:
        for ins in stage.instructions:
            if ins.cmd == "ARG":
                names.update(name for name, _ in arg_declarations(ins.args))
    return names


def target_stage(dockerfile: Dockerfile, target: str | None) -> Stage:
    if target is None:
        return dockerfile.stages[-1]
    stage = dockerfile.stage(target)
    if stage is None or not stage.name:
        raise BuildFailed("", f'target stage "{target}" could not be found')
    return stage


def needed_stages(dockerfile: Dockerfile, target: Stage, args: dict[str, str]) -> list[Stage]:
    needed: set[int] = set()

    def visit(stage: Stage) -> None:
        if stage.index in needed:
            return
        needed.add(stage.index)
        base = dockerfile.stage(expand(stage.base, args))
        if base is not None and base.index < stage.index:
            visit(base)
        for ins in stage.instructions:
            if ins.cmd == "COPY" and "from" in ins.flags:
                ref = dockerfile.stage(ins.flags["from"])
                if ref is None:
                    raise BuildFailed(
                        "",
                        f"COPY --from={ins.flags['from']} (line {ins.line}): the sandbox copies "
                        "from build stages only, and no stage has that name",
                    )
                if ref.index >= stage.index:
                    raise BuildFailed("", f"COPY --from={ins.flags['from']}: circular dependency")
                visit(ref)

    visit(target)
    return [s for s in dockerfile.stages if s.index in needed]
