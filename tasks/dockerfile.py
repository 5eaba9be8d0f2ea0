"""Dockerfiles as BuildKit's frontend reads them: the one parser of the pipeline (the cache
tiers' stages and their text, flows/build/tier_fingerprint.py). The sandbox's Cloud Build
executor reads Dockerfiles with its own reader (sandbox/buildkit/dockerfile.py): it checks this
one, it does not share it.

Supported: parser directives (`# syntax=`, `# escape=` with the default backslash only), comments,
line continuations, global `ARG` before the first `FROM`, multi-stage builds (`FROM … AS name`,
`FROM <stage>`), `ARG ENV COPY ADD RUN WORKDIR LABEL EXPOSE USER CMD ENTRYPOINT SHELL VOLUME
STOPSIGNAL HEALTHCHECK MAINTAINER`, flags such as `COPY --from= --chown= --chmod=` and
`RUN --mount=`, JSON (exec) and shell forms, and `$VAR` / `${VAR}` / `${VAR:-x}` / `${VAR:+x}`
substitution where Docker performs it. Any unknown instruction is refused with Docker's own
wording (`dockerfile parse error on line N: unknown instruction`), so a broken Dockerfile fails
the sandbox build the way it fails on Google. Heredocs (`RUN <<EOF`), `ONBUILD` and another
escape character are refused only when `refuse_unsupported` (the default: the sandbox's
executor does not run them); otherwise a heredoc's body is skipped as part of its instruction
(the pipeline only needs the stages: where they start, their names, their lines).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

KNOWN = frozenset(
    {
        "FROM",
        "ARG",
        "ENV",
        "COPY",
        "ADD",
        "RUN",
        "WORKDIR",
        "LABEL",
        "EXPOSE",
        "USER",
        "CMD",
        "ENTRYPOINT",
        "SHELL",
        "VOLUME",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "MAINTAINER",
        "ONBUILD",
    }
)
# Instructions that BuildKit shows as a step ("[stage i/n]") and that change the filesystem.
FS_STEPS = frozenset({"COPY", "ADD", "RUN", "WORKDIR"})
_FLAG_RE = re.compile(r"^--([a-z][a-z-]*)(?:=(\S*))?$")
# `<<EOF`, `<<-EOF`, `<<"EOF"`, `<<'EOF'` (several may follow one instruction, bodies in order)
_HEREDOC_RE = re.compile(r"<<(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2")
_VAR_RE = re.compile(
    r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))"
)


class DockerfileError(ValueError):
    """A Dockerfile BuildKit would refuse; the message reads like BuildKit's."""


@dataclass
class Instruction:
    cmd: str  # upper case
    args: str  # the text after the keyword and its flags, continuations joined
    line: int
    flags: dict[str, str] = field(default_factory=dict)
    flag_text: str = ""  # the flags as written, e.g. "--from=builder "

    @property
    def text(self) -> str:
        """How BuildKit prints the instruction in a step name."""
        return f"{self.cmd} {self.flag_text}{self.args}".strip()

    def json_args(self) -> list[str] | None:
        """The exec form's list, or None for the shell form."""
        raw = self.args.strip()
        if not raw.startswith("["):
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        return None


@dataclass
class Stage:
    index: int
    base: str  # the FROM argument as written (substituted later, with the global ARGs)
    name: str | None
    line: int
    platform: str | None = None
    instructions: list[Instruction] = field(default_factory=list)

    @property
    def display(self) -> str:
        """The stage as BuildKit names it in step names: its name, else stage-N."""
        return self.name or f"stage-{self.index}"


@dataclass
class Dockerfile:
    global_args: list[tuple[str, str | None]]
    stages: list[Stage]

    def stage(self, ref: str) -> Stage | None:
        """A stage by name (case-insensitive) or index, as FROM and COPY --from refer to it."""
        for stage in self.stages:
            if stage.name and stage.name == ref.lower():
                return stage
        if ref.isdigit() and int(ref) < len(self.stages):
            return self.stages[int(ref)]
        return None


def substitute(text: str, env: dict[str, str]) -> str:
    """Docker's word expansion: $VAR, ${VAR}, ${VAR:-default}, ${VAR:+alternative}."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(4)
        op, word = match.group(2), match.group(3)
        value = env.get(name)
        if op == ":-":
            return value if value else substitute(word or "", env)
        if op == ":+":
            return substitute(word or "", env) if value else ""
        return value or ""

    return _VAR_RE.sub(one, text)


def split_kv(args: str, cmd: str, line: int) -> list[tuple[str, str]]:
    """`K=V K2="v 2"` (or the legacy `K V` form of ENV/LABEL)."""
    try:
        words = shlex.split(args, posix=True)
    except ValueError as exc:
        raise DockerfileError(f"dockerfile parse error on line {line}: {cmd}: {exc}") from None
    if words and "=" not in words[0]:
        if len(words) < 2:
            raise DockerfileError(
                f"dockerfile parse error on line {line}: {cmd} requires at least two arguments"
            )
        return [(words[0], " ".join(words[1:]))]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise DockerfileError(
                f"dockerfile parse error on line {line}: {cmd} names can not be blank "
                f"(got {word!r}; use KEY=VALUE)"
            )
        pairs.append((key, value))
    return pairs


def _logical_lines(text: str, refuse_unsupported: bool = True) -> list[tuple[int, str]]:
    """Join continuation lines; drop comments and blank lines; keep each instruction's line.
    Without `refuse_unsupported`, the bodies of RUN/COPY/ADD heredocs are skipped."""
    out: list[tuple[int, str]] = []
    lines = text.splitlines()
    i, in_directives = 0, True
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        if in_directives and stripped.startswith("#"):
            directive = re.match(r"#\s*([a-zA-Z]+)\s*=\s*(.*)$", stripped)
            if (
                refuse_unsupported
                and directive
                and directive.group(1).lower() == "escape"
                and directive.group(2) != "\\"
            ):
                raise DockerfileError(
                    f"dockerfile parse error on line {i + 1}: the sandbox supports only the "
                    "default escape character '\\'"
                )
        if stripped and not stripped.startswith("#"):
            in_directives = False
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        start = i + 1
        parts = []
        current = raw.rstrip()
        while current.endswith("\\"):
            parts.append(current[:-1])
            i += 1
            while i < len(lines) and lines[i].strip().startswith("#"):
                i += 1  # comment lines inside a continuation are skipped (as Docker does)
            if i >= len(lines):
                current = ""
                break
            current = lines[i].rstrip()
        parts.append(current)
        logical = " ".join(p.strip() for p in parts if p.strip())
        out.append((start, logical))
        i += 1
        if not refuse_unsupported and logical.split(" ", 1)[0].upper() in ("RUN", "COPY", "ADD"):
            i = _skip_heredocs(lines, i, logical)
    return out


def _skip_heredocs(lines: list[str], i: int, logical: str) -> int:
    """The index of the line after the bodies of the instruction's heredocs (if any)."""
    for dash, _, word in _HEREDOC_RE.findall(logical):
        while i < len(lines):
            line = lines[i].lstrip("\t") if dash else lines[i]
            i += 1
            if line.rstrip("\r\n") == word:
                break
    return i


def _split_flags(cmd: str, rest: str, line: int) -> tuple[dict[str, str], str, str]:
    flags: dict[str, str] = {}
    flag_text = ""
    if cmd not in ("COPY", "ADD", "RUN", "FROM", "HEALTHCHECK"):
        return flags, "", rest
    while rest.startswith("--"):
        word, _, remainder = rest.partition(" ")
        match = _FLAG_RE.match(word)
        if not match:
            raise DockerfileError(f"dockerfile parse error on line {line}: bad flag {word!r}")
        name = match.group(1)
        allowed = {
            "COPY": {"from", "chown", "chmod", "link", "parents", "exclude"},
            "ADD": {"chown", "chmod", "link", "checksum", "keep-git-dir", "exclude"},
            "RUN": {"mount", "network", "security"},
            "FROM": {"platform"},
            "HEALTHCHECK": {"interval", "timeout", "start-period", "start-interval", "retries"},
        }[cmd]
        if name not in allowed:
            raise DockerfileError(
                f"dockerfile parse error on line {line}: unknown flag: --{name} "
                f"({cmd} accepts {', '.join('--' + a for a in sorted(allowed))})"
            )
        flags[name] = match.group(2) or ""
        flag_text += word + " "
        rest = remainder.lstrip()
    return flags, flag_text, rest


def parse_dockerfile(text: str, *, refuse_unsupported: bool = True) -> Dockerfile:
    """Parse into global ARGs and stages; raises DockerfileError like BuildKit's frontend.

    `refuse_unsupported`: refuse heredocs, ONBUILD and another escape character (what the
    sandbox's executor cannot run); the pipeline, which only reads stages, passes False."""
    global_args: list[tuple[str, str | None]] = []
    stages: list[Stage] = []
    for line, logical in _logical_lines(text, refuse_unsupported):
        keyword, _, rest = logical.partition(" ")
        cmd = keyword.upper()
        rest = rest.strip()
        if cmd not in KNOWN:
            raise DockerfileError(
                f"dockerfile parse error on line {line}: unknown instruction: {keyword}"
            )
        if cmd == "ONBUILD" and refuse_unsupported:
            raise DockerfileError(
                f"dockerfile parse error on line {line}: ONBUILD is not supported by the sandbox's "
                "Cloud Build executor"
            )
        if refuse_unsupported and "<<" in rest and cmd in ("RUN", "COPY", "ADD"):
            raise DockerfileError(
                f"dockerfile parse error on line {line}: heredocs ({cmd} <<EOF) are not supported by "
                "the sandbox's Cloud Build executor"
            )
        flags, flag_text, rest = _split_flags(cmd, rest, line)
        if cmd == "FROM":
            words = rest.split()
            if len(words) == 3 and words[1].lower() == "as":
                name = words[2].lower()
                if not re.match(r"^[a-z][a-z0-9._-]*$", name):
                    raise DockerfileError(
                        f"dockerfile parse error on line {line}: invalid name for build stage: "
                        f"{words[2]!r}, name can't start with a number or contain symbols"
                    )
            elif len(words) == 1:
                name = None
            else:
                raise DockerfileError(
                    f"dockerfile parse error on line {line}: FROM requires either one or three "
                    "arguments (FROM IMAGE [AS NAME])"
                )
            stages.append(Stage(len(stages), words[0], name, line, flags.get("platform")))
            continue
        if cmd == "ARG" and not stages:
            for word in rest.split():
                key, sep, default = word.partition("=")
                global_args.append((key, default if sep else None))
            continue
        if not stages:
            raise DockerfileError(
                f"dockerfile parse error on line {line}: no build stage in current context "
                f"({cmd} before the first FROM)"
            )
        if not rest and cmd not in ("HEALTHCHECK",):
            raise DockerfileError(
                f"dockerfile parse error on line {line}: {cmd} requires at least one argument"
            )
        stages[-1].instructions.append(Instruction(cmd, rest, line, flags, flag_text))
    if not stages:
        raise DockerfileError("the Dockerfile has no FROM instruction (no build stage)")
    names = [s.name for s in stages if s.name]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise DockerfileError(
            f"duplicate stage name(s) in the Dockerfile: {', '.join(sorted(dupes))}"
        )
    return Dockerfile(global_args, stages)
