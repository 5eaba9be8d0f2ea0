"""Instructions that only change the image config (ENV, LABEL, EXPOSE, USER, CMD, ...)."""

from __future__ import annotations

from sandbox.buildkit.build_state import StageState
from sandbox.buildkit.cache_keys import CHAIN_METADATA, chain_key
from sandbox.buildkit.dockerfile import (
    DockerfileError,
    Instruction,
    expand,
    expand_words,
    key_values,
)


def apply_metadata(state: StageState, ins: Instruction, scope: dict[str, str]) -> None:
    """Apply one metadata instruction; ARG/ENV/USER/SHELL also enter the cache key chain.

    Raises DockerfileError with BuildKit's wording for a malformed instruction.
    """
    cfg = state.config
    if ins.cmd == "ENV":
        # Every value sees the environment from before the instruction: in `ENV abc=bye
        # def=$abc`, def gets the old abc (the reference, "Environment replacement").
        for key, value in key_values(ins.args, "ENV", ins.line):
            state.env[key] = expand(value, scope)
        cfg["Env"] = [f"{k}={v}" for k, v in state.env.items()]
    elif ins.cmd == "LABEL":
        labels = dict(cfg.get("Labels") or {})
        for key, value in key_values(ins.args, "LABEL", ins.line):
            labels[expand(key, scope)] = expand(value, scope)
        cfg["Labels"] = labels
    elif ins.cmd == "EXPOSE":
        ports = dict(cfg.get("ExposedPorts") or {})
        for port in expand_words(ins.args, scope):
            ports[port if "/" in port else f"{port}/tcp"] = {}
        cfg["ExposedPorts"] = ports
    elif ins.cmd == "USER":
        cfg["User"] = expand(ins.args, scope)
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
        for vol in ins.json_args() or expand_words(ins.args, scope):
            vols[vol] = {}
        cfg["Volumes"] = vols
    elif ins.cmd == "STOPSIGNAL":
        cfg["StopSignal"] = expand(ins.args, scope)
    if ins.cmd in CHAIN_METADATA:
        state.key = chain_key(state.key, ins.text)
    state.history.append({"created_by": ins.text, "empty_layer": True})
