"""Git, thinly: resolve a ref of a remote to a commit, and check out one commit into a directory.

Works with any URL git understands (https://, ssh, file://, a local path). The checkout is a
shallow fetch of exactly one commit (`git fetch --depth 1 URL REV`), which is also what Cloud
Build does with a `gitSource`.

A URL may carry credentials (`https://user:token@host/repo.git`): every message this module
raises has them removed (`redact_credentials`), so they reach no log, artifact or exception.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import tempfile
from pathlib import Path

from shipyard.tasks.errors import PermanentError, TransientError

_SHA = re.compile(r"^[0-9a-f]{40}$")
# scheme://userinfo@ : the userinfo (user, user:password, a token) of any URL in a text
_URL_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/\s@]+@", re.IGNORECASE)


def redact_credentials(text: str) -> str:
    """`text` with the `user:password@` of every URL in it removed."""
    return _URL_USERINFO.sub(r"\1", text)


def public_url(url: str) -> str:
    """A URL without user:password@ (labels and logs must never carry a secret)."""
    return redact_credentials(url)


class GitError(PermanentError):
    """git refused (unknown ref, no such repository)."""


def _git(*args: str, cwd: Path | None = None, timeout: float = 120) -> str:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise TransientError(f"git {args[0]} timed out after {timeout:.0f}s") from None
    if proc.returncode != 0:
        message = f"git {' '.join(args[:2])} failed: {proc.stderr.strip()[-400:]}"
        raise GitError(redact_credentials(message))
    return proc.stdout


def resolve_revision(url: str, ref: str) -> str:
    """A full commit sha for `ref` (a sha, a tag — annotated tags peeled — or a branch)."""
    if _SHA.match(ref):
        return ref
    out = _git("ls-remote", url, ref, f"{ref}^{{}}", f"refs/tags/{ref}^{{}}")
    rows = [line.split("\t") for line in out.splitlines() if "\t" in line]
    peeled = [sha for sha, name in rows if name.endswith("^{}")]
    if peeled:
        return peeled[0]
    if rows:
        return rows[0][0]
    raise GitError(
        f"git ref {ref!r} was not found in {public_url(url)}: give an existing tag, branch or a "
        "full commit sha"
    )


def checkout(url: str, revision: str, into: Path | None = None) -> tuple[Path, str]:
    """Fetch one commit into a new directory; returns (directory, commit sha)."""
    root = into or Path(tempfile.mkdtemp(prefix="shipyard-src-"))
    _git("init", "-q", str(root))
    _git("fetch", "-q", "--depth", "1", url, revision, cwd=root)
    _git("checkout", "-q", "FETCH_HEAD", cwd=root)
    return root, _git("rev-parse", "HEAD", cwd=root).strip()


def tag_time(url: str, tag: str) -> dt.datetime:
    """When `tag` was made in the repository at `url`: an annotated tag's tagger date, a
    lightweight tag's commit date (git's `creatordate`). Fetches the tag alone, one commit deep,
    without file contents where the server filters (GitHub, GitLab do)."""
    ref = f"refs/tags/{tag}"
    with tempfile.TemporaryDirectory(prefix="shipyard-tag-") as tmp:
        root = Path(tmp)
        _git("init", "-q", "--bare", str(root))
        _git(
            "fetch",
            "-q",
            "--no-tags",
            "--depth",
            "1",
            "--filter=blob:none",
            url,
            f"+{ref}:{ref}",
            cwd=root,
        )
        out = _git("for-each-ref", "--format=%(creatordate:iso-strict)", ref, cwd=root).strip()
    if not out:
        raise GitError(f"git tag {tag!r} has no date in {public_url(url)}")
    return dt.datetime.fromisoformat(out)
