"""The build context: the checkout after .dockerignore, and COPY's selection of files from it."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from pathlib import Path

from sandbox.buildkit.build_state import BuildFailed


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    pattern = pattern.strip().lstrip("/")
    while pattern.startswith("./"):
        pattern = pattern[2:]
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out.rstrip("/") + "$")


def read_dockerignore(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    path = context / ".dockerignore"
    rules = []
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            rules.append((negate, _ignore_regex(line.lstrip("!"))))
    return rules


def _ignored(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def scan_context(context: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the context not excluded by .dockerignore: {rel path: (content, mode)}."""
    rules = read_dockerignore(context)
    files: dict[str, tuple[bytes, int]] = {}
    for root, dirs, names in os.walk(context):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(names):
            full = Path(root) / name
            rel = full.relative_to(context).as_posix()
            if _ignored(rel, rules) or not full.is_file():
                continue
            mode = 0o755 if os.access(full, os.X_OK) else 0o644
            files[rel] = (full.read_bytes(), mode)
    return files


def select_files(
    tree: dict[str, tuple[bytes, int]], sources: list[str], dest: str, workdir: str, where: str
) -> dict[str, tuple[bytes, int]]:
    """COPY semantics over a file tree (paths without a leading slash): {dest path: (data, mode)}."""
    if not dest.startswith("/"):
        dest = (workdir.rstrip("/") + "/" + dest) if dest not in (".", "./") else workdir + "/"
    dest_is_dir = dest.endswith("/") or len(sources) > 1
    out: dict[str, tuple[bytes, int]] = {}
    for src in sources:
        norm = src.strip().lstrip("/")
        while norm.startswith("./"):
            norm = norm[2:]
        norm = norm.rstrip("/")
        if norm in ("", "."):
            matched = {rel: rel for rel in tree}
        elif any(ch in norm for ch in "*?["):
            matched = {
                rel: rel.rsplit("/", 1)[-1] for rel in tree if fnmatch.fnmatchcase(rel, norm)
            }
            dest_is_dir = True
        elif norm in tree:
            matched = {norm: norm.rsplit("/", 1)[-1] if dest_is_dir else ""}
        else:
            prefix = norm + "/"
            matched = {rel: rel[len(prefix) :] for rel in tree if rel.startswith(prefix)}
            dest_is_dir = True
        if not matched:
            raise BuildFailed(
                where,
                f'failed to compute cache key: failed to calculate checksum of ref: "/{norm}": '
                "not found",
            )
        for rel, tail in matched.items():
            target = (dest.rstrip("/") + "/" + tail) if tail else dest
            out["/" + target.strip("/")] = tree[rel]
    return out


def files_digest(files: dict[str, tuple[bytes, int]]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        data, mode = files[path]
        h.update(f"{path}\0{mode:o}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return h.hexdigest()
