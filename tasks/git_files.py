"""Git, thinly: read files of one commit of a remote repository, without a work tree.

`read_files(url, ref, paths)` fetches exactly that commit (`git fetch --depth 1 URL REF` into a
bare temporary repository) and reads each path with `git cat-file blob REF:PATH`: what the
canary's `repo:` samples need, from the same source the build checks out. A URL may carry
credentials (`https://user:token@host/repo.git`): every message raised here has them removed.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from shipyard.tasks.errors import TransientError
from shipyard.tasks.git_source import GitError, redact_credentials

__all__ = ["MissingFileError", "read_files"]


class MissingFileError(GitError):
    """The commit has no file at that path."""


def _git(args: list[str], cwd: Path, timeout: float) -> bytes:
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TransientError(f"git {args[0]} timed out after {timeout:.0f}s") from None
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()[-400:]
        raise GitError(redact_credentials(f"git {' '.join(args[:2])} failed: {stderr}"))
    return proc.stdout


def read_files(
    url: str, ref: str, paths: Sequence[str], *, timeout: float = 120.0
) -> dict[str, bytes]:
    """{path: bytes} of `paths` (relative to the repository's root) at `ref` (a tag, a branch
    or a full commit sha) of the repository at `url`."""
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="shipyard-files-") as tmp:
        root = Path(tmp)
        _git(["init", "-q", "--bare", str(root)], root, timeout)
        _git(["fetch", "-q", "--no-tags", "--depth", "1", url, ref], root, timeout)
        for path in dict.fromkeys(paths):
            clean = path.lstrip("/")
            try:
                out[path] = _git(["cat-file", "blob", f"FETCH_HEAD:{clean}"], root, timeout)
            except GitError:
                raise MissingFileError(
                    f"{redact_credentials(url)} has no file {clean!r} at {ref!r}: give a path "
                    "relative to the repository's root, committed at that tag"
                ) from None
    return out
