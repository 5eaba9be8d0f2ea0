"""The `docker buildx build` flags of a Cloud Build step, as the sandbox's BuildKit reads them.

Anything the sandbox does not implement is refused by name (BuildFailed with an empty step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sandbox.buildkit.build_state import BuildFailed


@dataclass
class BuildxArgs:
    context: str = "."
    dockerfile: str | None = None
    target: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    cache_from: list[str] = field(default_factory=list)
    cache_to: list[dict[str, str]] = field(default_factory=list)
    push: bool = False
    no_cache: bool = False


def _kv_list(value: str) -> dict[str, str]:
    out = {}
    for part in value.split(","):
        key, sep, val = part.partition("=")
        if not sep:
            raise BuildFailed("", f"invalid value {value!r}: expected key=value[,key=value]")
        out[key.strip()] = val.strip()
    return out


def parse_buildx_build(args: list[str]) -> BuildxArgs:
    """The arguments after `buildx build`; refuses what the sandbox does not implement."""
    out = BuildxArgs()
    positional: list[str] = []
    i = 0
    with_value = {
        "-f": "file",
        "--file": "file",
        "-t": "tag",
        "--tag": "tag",
        "--target": "target",
        "--build-arg": "build-arg",
        "--label": "label",
        "--cache-from": "cache-from",
        "--cache-to": "cache-to",
        "--platform": "platform",
        "--progress": "progress",
        "--provenance": "provenance",
        "--sbom": "sbom",
        "--metadata-file": "metadata-file",
        "--builder": "builder",
        "--output": "output",
        "-o": "output",
    }
    switches = {"--push", "--pull", "--no-cache", "--load", "-q", "--quiet"}
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in switches and not eq:
            if name == "--push":
                out.push = True
            elif name == "--no-cache":
                out.no_cache = True
            elif name == "--load":
                raise BuildFailed(
                    "",
                    "--load is not available with the docker-container driver on Cloud Build: "
                    "use --push",
                )
            i += 1
            continue
        if name in ("--provenance", "--sbom") and not eq and i + 1 >= len(args):
            i += 1
            continue
        if name in with_value:
            if eq:
                value = inline
            else:
                if i + 1 >= len(args):
                    raise BuildFailed("", f"flag needs an argument: {name}")
                value = args[i + 1]
                i += 1
            kind = with_value[name]
            if kind == "file":
                out.dockerfile = value
            elif kind == "tag":
                out.tags.append(value)
            elif kind == "target":
                out.target = value
            elif kind == "build-arg":
                key, sep, val = value.partition("=")
                if not sep:
                    raise BuildFailed(
                        "",
                        f"--build-arg {value!r}: give KEY=VALUE (no host environment on the builder)",
                    )
                out.build_args[key] = val
            elif kind == "label":
                key, _, val = value.partition("=")
                out.labels[key] = val
            elif kind == "cache-from":
                spec = _kv_list(value) if "=" in value else {"type": "registry", "ref": value}
                if spec.get("type", "registry") != "registry" or not spec.get("ref"):
                    raise BuildFailed(
                        "", f"--cache-from {value!r}: the sandbox imports type=registry,ref=… only"
                    )
                out.cache_from.append(spec["ref"])
            elif kind == "cache-to":
                spec = _kv_list(value)
                kind_to = spec.get("type")
                if kind_to == "inline":
                    out.cache_to.append({"type": "inline"})
                elif kind_to == "registry" and spec.get("ref"):
                    mode = spec.get("mode", "min")
                    if mode not in ("min", "max"):
                        raise BuildFailed("", f"--cache-to {value!r}: mode must be min or max")
                    out.cache_to.append({"type": "registry", "ref": spec["ref"], "mode": mode})
                else:
                    raise BuildFailed(
                        "",
                        f"--cache-to {value!r}: the sandbox exports type=inline or "
                        "type=registry,ref=…[,mode=max] only",
                    )
            elif kind == "platform" and value not in ("linux/amd64", "linux/x86_64"):
                raise BuildFailed("", f"--platform {value}: the sandbox builds linux/amd64 only")
            elif kind == "output":
                spec = _kv_list(value)
                if spec.get("type") not in ("registry", "image"):
                    raise BuildFailed("", f"--output {value!r}: use type=registry (or --push)")
                out.push = out.push or spec.get("type") == "registry" or spec.get("push") == "true"
            i += 1
            continue
        if arg.startswith("-"):
            raise BuildFailed("", f"unknown flag: {name}")
        positional.append(arg)
        i += 1
    if len(positional) != 1:
        raise BuildFailed(
            "", f'"docker buildx build" requires exactly 1 argument (the context), got {positional}'
        )
    out.context = positional[0]
    return out


# ---------------------------------------------------------------- the build context
