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
_SHORT_SHA = re.compile(r"^[0-9a-f]{7,64}$")
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


def _ls_remote(url: str, *patterns: str, tags: bool = False) -> dict[str, str]:
    """{ref name: sha} of `git ls-remote [--tags] URL PATTERN...` (a peeled tag: `NAME^{}`)."""
    out = _git("ls-remote", *(["--tags"] if tags else []), url, *patterns, timeout=60)
    rows = (line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    return {name.strip(): sha.strip() for sha, name in rows}


def resolve_revision(url: str, ref: str) -> str:
    """A full commit sha for `ref`: a tag (annotated tags peeled to their commit, `^{commit}`),
    a branch, or a full sha. A full sha that is an annotated tag's own object (what GitHub's
    push delivery sends as `after` for such a tag) is peeled to the commit as well: images are
    keyed by the commit, never by a tag object."""
    if _SHA.match(ref):
        refs = _ls_remote(url, tags=True)
        for name, sha in refs.items():
            if sha == ref and not name.endswith("^{}") and f"{name}^{{}}" in refs:
                return refs[f"{name}^{{}}"]
        return ref
    refs = _ls_remote(url, ref, f"{ref}^{{}}", f"refs/tags/{ref}^{{}}")
    peeled = [sha for name, sha in refs.items() if name.endswith("^{}")]
    if peeled:
        return peeled[0]
    if refs:
        return next(iter(refs.values()))
    raise GitError(
        f"git ref {ref!r} was not found in {public_url(url)}: give an existing tag, branch or a "
        "full commit sha"
    )


class TagMismatchError(GitError):
    """The release tag does not exist, or points at another commit than the one given."""


def tag_target(url: str, tag: str) -> tuple[str, str] | None:
    """(the sha `refs/tags/TAG` names, the commit it points at) or None when there is no such
    tag. For a lightweight tag both are the commit; for an annotated one the first is the tag
    object and the second its commit (`git ls-remote` shows it as `refs/tags/TAG^{}`)."""
    ref = f"refs/tags/{tag}"
    refs = _ls_remote(url, ref, f"{ref}^{{}}")
    own = refs.get(ref)  # ls-remote matches patterns by their tail: take the exact name only
    if own is None:
        return None
    return own, refs.get(f"{ref}^{{}}", own)


def verify_tag(url: str, tag: str, commit: str | None = None) -> str:
    """The commit `tag` points at in the repository at `url`, after checking that the tag
    exists and that `commit` (when given: a sha, at least 7 hex digits, or a ref) is that
    commit or the annotated tag's own object. Raises TagMismatchError naming the tag, the
    commit it points at and the commit given: a release must never build a commit under a tag
    that does not point at it."""
    found = tag_target(url, tag)
    if found is None:
        raise TagMismatchError(
            f"git tag {tag!r} does not exist in {public_url(url)}"
            + (f" (the commit given is {commit})" if commit else "")
            + ": push the tag first, or release a tag the repository has"
        )
    own, target = found
    if not commit or commit == tag:
        return target
    given = commit if _SHORT_SHA.match(commit) else resolve_revision(url, commit)
    if any(sha.startswith(given) for sha in (own, target)):
        return target
    raise TagMismatchError(
        f"git tag {tag!r} points at commit {target} in {public_url(url)}, not at the commit "
        f"given ({commit}): release the tag's own commit (leave commit empty) or move the tag"
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
