"""Instructions that only change the image config (ENV, LABEL, EXPOSE, USER, CMD, ...)."""

from __future__ import annotations

from sandbox.buildkit.build_state import StageState
from sandbox.buildkit.cache_keys import CHAIN_METADATA, chain_key
from shipyard.tasks.dockerfile import DockerfileError, Instruction, split_kv, substitute


def apply_metadata(state: StageState, ins: Instruction, scope: dict[str, str]) -> None:
    """Apply one metadata instruction; ARG/ENV/USER/SHELL also enter the cache key chain.

    Raises DockerfileError with BuildKit's wording for a malformed instruction.
    """
    cfg = state.config
    if ins.cmd == "ENV":
        for key, value in split_kv(ins.args, "ENV", ins.line):
            state.env[key] = substitute(value, {**scope, **state.env})
        cfg["Env"] = [f"{k}={v}" for k, v in state.env.items()]
    elif ins.cmd == "LABEL":
        labels = dict(cfg.get("Labels") or {})
        for key, value in split_kv(ins.args, "LABEL", ins.line):
            labels[substitute(key, scope)] = substitute(value, scope)
        cfg["Labels"] = labels
    elif ins.cmd == "EXPOSE":
        ports = dict(cfg.get("ExposedPorts") or {})
        for port in substitute(ins.args, scope).split():
            ports[port if "/" in port else f"{port}/tcp"] = {}
        cfg["ExposedPorts"] = ports
    elif ins.cmd == "USER":
        cfg["User"] = substitute(ins.args, scope)
    elif ins.cmd in ("CMD", "ENTRYPOINT"):
        words = ins.json_args()
        if words is None:
            words = [*(cfg.get("Shell") or ["/bin/sh", "-c"]), ins.args]
        cfg["Cmd" if ins.cmd == "CMD" else "Entrypoint"] = words
    elif ins.cmd == "SHELL":
        words = ins.json_args()
        if words is None:
            raise DockerfileError(
                f"dockerfile parse error on line {ins.line}: SHELL requires the JSON form"
            )
        cfg["Shell"] = words
    elif ins.cmd == "VOLUME":
        vols = dict(cfg.get("Volumes") or {})
        for vol in ins.json_args() or ins.args.split():
            vols[vol] = {}
        cfg["Volumes"] = vols
    elif ins.cmd == "STOPSIGNAL":
        cfg["StopSignal"] = ins.args
    if ins.cmd in CHAIN_METADATA:
        state.key = chain_key(state.key, ins.text)
    state.history.append({"created_by": ins.text, "empty_layer": True})
