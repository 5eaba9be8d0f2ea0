"""The emulated BuildKit's own Dockerfile reader: what the builder needs, as BuildKit reads it.

The sandbox checks the pipeline's Dockerfile handling, so it does not share the pipeline's
parser (tasks/dockerfile.py): it reads Dockerfiles by the rules of the Dockerfile reference
(https://docs.docker.com/reference/dockerfile/):

- "Format": an instruction is a case-insensitive keyword and its arguments; a line whose first
  non-blank character is `#` is a comment, anywhere else `#` is an argument. Comment lines and
  empty lines inside a continuation are dropped.
- "Parser directives" (`# syntax=…`, `# escape=…`, `# check=…`) are read only at the very top:
  the first comment, empty line or instruction ends them. The sandbox supports the default
  escape character `\\` only and refuses another one by name.
- Line continuations: the escape character at the end of a line (trailing blanks allowed)
  continues the instruction; BuildKit removes it and joins the next line as written (its
  indentation kept), which is how the instruction then reads in a step name.
- "FROM": `FROM [--platform=<p>] <image> [AS <name>]`; stage names are lower-cased and must
  start with a letter; `FROM <stage>` and `COPY --from=<stage|index>` refer to earlier stages.
  `ARG` before the first `FROM` declares global build args (usable in FROM lines).
- "Environment replacement": `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR-word}`, `${VAR:+word}`,
  `${VAR+word}`; `\\$` is a literal dollar; single quotes keep text literal, double quotes
  group words and still expand. Expanded in ADD COPY ENV EXPOSE FROM LABEL STOPSIGNAL USER
  VOLUME WORKDIR (never in RUN, CMD, ENTRYPOINT: the shell does that).
- "Shell and exec form": a JSON array of strings is the exec form, anything else the shell form.
- "ENV" / "LABEL": `<key>=<value> …` (quotes group a value) or the legacy `ENV <key> <value>`.

Not run by the sandbox's executor, refused with a line saying so: heredocs (`RUN <<EOF`),
`ONBUILD`, another escape character. An unknown instruction or flag fails like BuildKit's
frontend (`dockerfile parse error on line N: unknown instruction: RUNN`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

INSTRUCTIONS = frozenset(
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
# The instructions BuildKit shows as a numbered step ("[stage i/n]"): they change the filesystem.
FS_STEPS = frozenset({"COPY", "ADD", "RUN", "WORKDIR"})
# The flags each instruction accepts (the reference's synopsis of each).
FLAGS: dict[str, frozenset[str]] = {
    "FROM": frozenset({"platform"}),
    "RUN": frozenset({"mount", "network", "security"}),
    "COPY": frozenset({"from", "chown", "chmod", "link", "parents", "exclude"}),
    "ADD": frozenset({"chown", "chmod", "link", "checksum", "keep-git-dir", "exclude"}),
    "HEALTHCHECK": frozenset({"interval", "timeout", "start-period", "start-interval", "retries"}),
}
_DIRECTIVE = re.compile(r"^#[ \t]*([A-Za-z][A-Za-z0-9]*)[ \t]*=[ \t]*(.*?)[ \t]*$")
_CONTINUATION = re.compile(r"\\[ \t]*$")
_FLAG = re.compile(r"^--([a-z][a-z-]*)(?:=(.*))?$")
_HEREDOC = re.compile(r"<<-?([\"']?)[A-Za-z_][A-Za-z0-9_]*\1")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9._-]*$")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class DockerfileError(ValueError):
    """A Dockerfile BuildKit would refuse (or the sandbox cannot run); worded like BuildKit."""


def _error(line: int, message: str) -> DockerfileError:
    return DockerfileError(f"dockerfile parse error on line {line}: {message}")


@dataclass
class Instruction:
    cmd: str  # upper case
    args: str  # the text after the keyword and its flags, continuations joined
    line: int  # where the instruction starts
    flags: dict[str, str] = field(default_factory=dict)
    flag_text: str = ""  # the flags as written, e.g. "--from=builder "

    @property
    def text(self) -> str:
        """How BuildKit prints the instruction in a step name."""
        return f"{self.cmd} {self.flag_text}{self.args}".strip()

    def json_args(self) -> list[str] | None:
        """The exec form's list, or None for the shell form."""
        if not self.args.startswith("["):
            return None
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        return None


@dataclass
class Stage:
    index: int
    base: str  # the FROM argument as written (expanded later, with the global ARGs)
    name: str | None
    line: int
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


# -- words and environment replacement ------------------------------------------------------


class _Lexer:
    """One pass over a word list the way BuildKit's shell lexer does it: quotes, escapes and
    `$` expansions together (so `'$X'` stays literal and `"a b"` is one word)."""

    def __init__(self, text: str, env: dict[str, str] | None) -> None:
        self.text, self.env, self.pos = text, env, 0

    def peek(self, ahead: int = 0) -> str:
        at = self.pos + ahead
        return self.text[at] if at < len(self.text) else ""

    def words(self, split: bool) -> list[str]:
        out: list[str] = []
        word, started = "", False
        while self.pos < len(self.text):
            ch = self.peek()
            if split and ch in " \t":
                if started:
                    out.append(word)
                word, started = "", False
                self.pos += 1
                continue
            started = True
            if ch == "'":
                end = self.text.find("'", self.pos + 1)
                end = len(self.text) if end < 0 else end
                word += self._keep(self.text[self.pos : end + 1], self.text[self.pos + 1 : end])
                self.pos = end + 1
            elif ch == '"':
                word += self._double_quoted()
            elif ch == "\\" and self.peek(1):
                word += self._keep(ch + self.peek(1), self.peek(1))
                self.pos += 2
            elif ch == "$":
                word += self._dollar()
            else:
                word += ch
                self.pos += 1
        if started:
            out.append(word)
        return out

    def _keep(self, raw: str, value: str) -> str:
        """Without an environment the lexer only splits words: quotes and escapes stay."""
        return raw if self.env is None else value

    def _double_quoted(self) -> str:
        start = self.pos
        self.pos += 1
        value = ""
        while self.pos < len(self.text) and self.peek() != '"':
            ch = self.peek()
            if ch == "\\" and self.peek(1) in ('"', "$", "\\"):
                value += self.peek(1)
                self.pos += 2
            elif ch == "$":
                value += self._dollar()
            else:
                value += ch
                self.pos += 1
        self.pos += 1
        return self._keep(self.text[start : self.pos], value)

    def _dollar(self) -> str:
        start = self.pos
        self.pos += 1
        if self.peek() == "{":
            end = self._closing_brace(self.pos)
            if end < 0:
                self.pos = len(self.text)
                return self.text[start:]
            inner = self.text[self.pos + 1 : end]
            self.pos = end + 1
            return self.text[start : self.pos] if self.env is None else self._braced(inner)
        match = _NAME.match(self.text, self.pos)
        if not match:
            return "$"
        self.pos = match.end()
        if self.env is None:
            return self.text[start : self.pos]
        return self.env.get(match.group(0), "")

    def _closing_brace(self, opening: int) -> int:
        depth = 0
        for at in range(opening, len(self.text)):
            if self.text[at] == "{":
                depth += 1
            elif self.text[at] == "}":
                depth -= 1
                if depth == 0:
                    return at
        return -1

    def _braced(self, inner: str) -> str:
        env = self.env or {}
        match = _NAME.match(inner)
        if not match:
            return ""
        name, rest = match.group(0), inner[match.end() :]
        value = env.get(name)
        for op, use in _MODIFIERS.items():
            if rest.startswith(op):
                word = _Lexer(rest[len(op) :], env).words(split=False)
                return (word[0] if word else "") if use(value) else (value or "")
        return value or ""


# ${VAR<op>word}: whether `word` replaces the value (value None: VAR is not set).
_MODIFIERS: dict[str, Callable[[str | None], bool]] = {
    ":-": lambda value: not value,
    "-": lambda value: value is None,
    ":+": lambda value: bool(value),
    "+": lambda value: value is not None,
}


def expand(text: str, env: dict[str, str]) -> str:
    """One word, quotes removed and variables replaced (WORKDIR, USER, FROM, an ENV value)."""
    words = _Lexer(text, env).words(split=False)
    return words[0] if words else ""


def expand_words(text: str, env: dict[str, str]) -> list[str]:
    """Blank-separated words, quotes removed and variables replaced (COPY, EXPOSE, VOLUME)."""
    return _Lexer(text, env).words(split=True)


def raw_words(text: str) -> list[str]:
    """Blank-separated words as written (quotes kept): the words of ENV, LABEL and ARG."""
    return _Lexer(text, None).words(split=True)


def key_values(args: str, cmd: str, line: int) -> list[tuple[str, str]]:
    """ENV/LABEL pairs, the values as written (expand() them in the instruction's scope):
    `K=V K2="v 2"`, or the legacy one-pair form `K V W` (the value is the rest of the line)."""
    words = raw_words(args)
    if words and "=" not in words[0]:
        if len(words) < 2:
            raise _error(line, f"{cmd} must have two arguments")
        return [(words[0], args.strip()[len(words[0]) :].strip())]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise _error(line, f"{cmd} names can not be blank (got {word!r}; use KEY=VALUE)")
        pairs.append((key, value))
    return pairs


def arg_declarations(args: str) -> list[tuple[str, str | None]]:
    """`ARG name[=default] …` -> (name, default as written, or None when there is none)."""
    out: list[tuple[str, str | None]] = []
    for word in raw_words(args):
        name, sep, default = word.partition("=")
        out.append((name, default if sep else None))
    return out


# -- lines, instructions, stages ------------------------------------------------------------


def _instructions(text: str) -> list[tuple[int, str]]:
    """(first line number, logical line): directives read, comments dropped, continuations
    joined as BuildKit joins them (the escape character removed, the next line as written)."""
    lines = text.splitlines()
    out: list[tuple[int, str]] = []
    i, directives = 0, True
    while i < len(lines):
        stripped = lines[i].strip()
        directive = _DIRECTIVE.match(stripped) if directives else None
        if directive is None:
            directives = False
        elif directive.group(1).lower() == "escape" and directive.group(2) != "\\":
            raise _error(i + 1, "the sandbox supports only the default escape character '\\'")
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        start, logical = i + 1, lines[i].lstrip()
        while _CONTINUATION.search(logical) and i + 1 < len(lines):
            logical = _CONTINUATION.sub("", logical)
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith("#")):
                i += 1
            if i < len(lines):
                logical += lines[i]
        out.append((start, _CONTINUATION.sub("", logical).strip()))
        i += 1
    return out


def _flags(cmd: str, rest: str, line: int) -> tuple[dict[str, str], str, str]:
    """The leading `--name[=value]` flags: (flags, their text as written, the arguments)."""
    flags: dict[str, str] = {}
    written = ""
    allowed = FLAGS.get(cmd, frozenset())
    while rest.startswith("--"):
        word, _, remainder = rest.partition(" ")
        match = _FLAG.match(word)
        if not match:
            raise _error(line, f"bad flag {word!r}")
        if match.group(1) not in allowed:
            accepts = ", ".join(f"--{a}" for a in sorted(allowed)) or "no flags"
            raise _error(line, f"unknown flag: --{match.group(1)} ({cmd} accepts {accepts})")
        flags[match.group(1)] = match.group(2) or ""
        written += word + " "
        rest = remainder.lstrip()
    return flags, written, rest


def _stage(index: int, args: str, line: int) -> Stage:
    words = args.split()
    if len(words) == 3 and words[1].lower() == "as":
        name: str | None = words[2].lower()
        if not _STAGE_NAME.match(words[2].lower()):
            raise _error(
                line,
                f"invalid name for build stage: {words[2]!r}, name can't start with a number "
                "or contain symbols",
            )
    elif len(words) == 1:
        name = None
    else:
        raise _error(line, "FROM requires either one or three arguments (FROM IMAGE [AS NAME])")
    return Stage(index, words[0], name, line)


def _refuse_unsupported(cmd: str, rest: str, line: int) -> None:
    if cmd == "ONBUILD":
        raise _error(line, "ONBUILD is not supported by the sandbox's Cloud Build executor")
    if cmd in ("RUN", "COPY", "ADD") and _HEREDOC.search(rest):
        raise _error(
            line,
            f"heredocs ({cmd} <<EOF) are not supported by the sandbox's Cloud Build executor",
        )


def parse_dockerfile(text: str) -> Dockerfile:
    """Global ARGs and stages; raises DockerfileError where BuildKit's frontend (or the
    sandbox's executor) refuses the file."""
    global_args: list[tuple[str, str | None]] = []
    stages: list[Stage] = []
    for line, logical in _instructions(text):
        keyword, _, rest = logical.partition(" ")
        cmd, rest = keyword.upper(), rest.strip()
        if cmd not in INSTRUCTIONS:
            raise _error(line, f"unknown instruction: {keyword}")
        _refuse_unsupported(cmd, rest, line)
        flags, flag_text, rest = _flags(cmd, rest, line)
        if cmd == "FROM":
            stages.append(_stage(len(stages), rest, line))
            continue
        if cmd == "ARG" and not stages:
            global_args += arg_declarations(rest)
            continue
        if not stages:
            raise _error(line, f"no build stage in current context ({cmd} before the first FROM)")
        if not rest and cmd != "HEALTHCHECK":
            raise _error(line, f"{cmd} requires at least one argument")
        stages[-1].instructions.append(Instruction(cmd, rest, line, flags, flag_text))
    if not stages:
        raise DockerfileError("the Dockerfile has no FROM instruction (no build stage)")
    names = [s.name for s in stages if s.name]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DockerfileError(f"duplicate stage name(s) in the Dockerfile: {', '.join(duplicates)}")
    return Dockerfile(global_args, stages)
