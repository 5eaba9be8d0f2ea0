"""BuildKit's progress as the Docker Engine API streams it, rendered as `--progress plain` lines.

A BuildKit build through the Engine API (`POST /build?version=2`) streams JSON messages; those
with `"id": "moby.buildkit.trace"` carry in `aux` a base64 protobuf `moby.buildkit.v1.StatusResponse`
(github.com/moby/buildkit, api/services/control/control.proto)::

    StatusResponse { repeated Vertex vertexes = 1; repeated VertexStatus statuses = 2;
                     repeated VertexLog logs = 3; repeated VertexWarning warnings = 4; }
    Vertex    { string digest = 1; repeated string inputs = 2; string name = 3; bool cached = 4;
                Timestamp started = 5; Timestamp completed = 6; string error = 7; ... }
    VertexLog { string vertex = 1; Timestamp timestamp = 2; int64 stream = 3; bytes msg = 4; }

`PlainPrinter` turns them into the lines BuildKit's plain printer writes (`#5 [deps 2/3] RUN …`,
`#5 0.512 output`, `#5 CACHED`, `#5 DONE 1.2s`, `#5 ERROR: …`), so one parser
(tasks/buildkit_log.py) reads the log of either build backend. The wire format is decoded by hand
(a few fields of four messages): no generated code and no BuildKit client library needed.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field

TRACE_ID = "moby.buildkit.trace"


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of one message: varints as int, length-delimited as bytes."""
    out: list[tuple[int, int | bytes]] = []
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
            out.append((number, value))
        elif wire == 2:
            size, at = _varint(data, at)
            out.append((number, data[at : at + size]))
            at += size
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        else:
            raise ValueError(f"protobuf wire type {wire} is not expected in a BuildKit status")
    return out


def _timestamp(data: bytes) -> float:
    parts = dict(_fields(data))
    seconds, nanos = parts.get(1, 0), parts.get(2, 0)
    if not isinstance(seconds, int) or not isinstance(nanos, int):
        raise ValueError("a BuildKit timestamp's seconds and nanos must be varints")
    return seconds + nanos / 1e9


@dataclass
class Vertex:
    digest: str
    name: str = ""
    cached: bool = False
    started: float | None = None
    completed: float | None = None
    error: str = ""


@dataclass
class VertexLog:
    vertex: str
    timestamp: float
    msg: bytes


def decode_status(aux: str) -> tuple[list[Vertex], list[VertexLog]]:
    """The vertices and logs of one `moby.buildkit.trace` message (statuses are not needed)."""
    vertices: list[Vertex] = []
    logs: list[VertexLog] = []
    for number, value in _fields(base64.b64decode(aux)):
        if not isinstance(value, bytes):
            continue
        if number == 1:
            v = Vertex("")
            for n, val in _fields(value):
                if n == 1 and isinstance(val, bytes):
                    v.digest = val.decode()
                elif n == 3 and isinstance(val, bytes):
                    v.name = val.decode(errors="replace")
                elif n == 4:
                    v.cached = bool(val)
                elif n == 5 and isinstance(val, bytes):
                    v.started = _timestamp(val)
                elif n == 6 and isinstance(val, bytes):
                    v.completed = _timestamp(val)
                elif n == 7 and isinstance(val, bytes):
                    v.error = val.decode(errors="replace")
            vertices.append(v)
        elif number == 3:
            log = VertexLog("", 0.0, b"")
            for n, val in _fields(value):
                if n == 1 and isinstance(val, bytes):
                    log.vertex = val.decode()
                elif n == 2 and isinstance(val, bytes):
                    log.timestamp = _timestamp(val)
                elif n == 4 and isinstance(val, bytes):
                    log.msg = val
            logs.append(log)
    return vertices, logs


@dataclass
class PlainPrinter:
    """BuildKit's plain progress, one line per `emit`, from decoded status messages."""

    emit: Callable[[str], None]
    numbers: dict[str, int] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    partial: dict[str, bytes] = field(default_factory=dict)

    def _number(self, v: Vertex) -> int:
        if v.digest not in self.numbers:
            self.numbers[v.digest] = len(self.numbers) + 1
            self.emit(f"#{self.numbers[v.digest]} {v.name}")
        return self.numbers[v.digest]

    def feed(self, aux: str) -> None:
        vertices, logs = decode_status(aux)
        for v in vertices:
            if v.started is None and not v.cached and not v.completed:
                continue  # known but not started: BuildKit prints it when it starts
            n = self._number(v)
            if v.started is not None:
                self.started.setdefault(v.digest, v.started)
            if v.digest in self.finished:
                continue
            if v.cached:
                self.emit(f"#{n} CACHED")
                self.finished.add(v.digest)
            elif v.error:
                self._flush(v.digest)
                self.emit(f"#{n} ERROR: {v.error}")
                self.finished.add(v.digest)
            elif v.completed is not None:
                self._flush(v.digest)
                took = v.completed - self.started.get(v.digest, v.completed)
                self.emit(f"#{n} DONE {took:.1f}s")
                self.finished.add(v.digest)
        for log in logs:
            if log.vertex not in self.numbers:
                continue
            n = self.numbers[log.vertex]
            text = self.partial.pop(log.vertex, b"") + log.msg
            *complete, rest = text.split(b"\n")
            if rest:
                self.partial[log.vertex] = rest
            since = log.timestamp - self.started.get(log.vertex, log.timestamp)
            for line in complete:
                self.emit(f"#{n} {since:.3f} {line.decode(errors='replace').rstrip()}")

    def _flush(self, digest: str) -> None:
        rest = self.partial.pop(digest, b"")
        if rest:
            self.emit(f"#{self.numbers[digest]} {rest.decode(errors='replace').rstrip()}")
