"""How the webhook receiver is configured: `WebhookSettings` and the repository allow-list.

The allow-list maps each repository allowed to release to its release target (the name of
a `ReleaseTarget` block, so a service). A delivery from any other repository is refused
with 403, even when it is signed: an organisation-wide secret must not let any repository
release production. It comes from, in order:

- `--repo owner/name=target` (repeatable) on `shipyard webhook serve`;
- `SHIPYARD_WEBHOOK_REPOS="owner/name=target,group/sub/name=other"`;
- a YAML file (`--repos-file` or `SHIPYARD_WEBHOOK_REPOS_FILE`):
  `repositories: {acme/manga-translator: default, acme/ocr: ocr-prod}`.

Without any, every tag push is refused (403) with a message naming these settings.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from shipyard.blocks.release_tag import (
    RELEASE_TAG_PATTERN,
    TAG_PATTERN_ENV,
    compile_tag_pattern,
    shown,
)
from shipyard.deployments.webhook.signature import DEFAULT_SECRET_BLOCK, SECRET_BLOCK_ENV

REPOS_ENV = "SHIPYARD_WEBHOOK_REPOS"
REPOS_FILE_ENV = "SHIPYARD_WEBHOOK_REPOS_FILE"
JOURNAL_ENV = "SHIPYARD_WEBHOOK_JOURNAL"
DEFAULT_MAX_BODY = 1024 * 1024
_REPO = re.compile(r"\A[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+\Z")
_TARGET = re.compile(r"\A[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?\Z")


def parse_repositories(entries: list[str] | dict[str, str], source: str) -> dict[str, str]:
    """{owner/name lower-cased: target}; ValueError naming the source, the entry and the fix."""
    pairs: list[tuple[str, str]] = []
    if isinstance(entries, dict):
        pairs = [(str(k), str(v)) for k, v in entries.items()]
    else:
        for entry in entries:
            repo, sep, target = entry.strip().partition("=")
            if not sep:
                raise ValueError(
                    f"{source}: entry {shown(entry)} has no target: write owner/name=target"
                )
            pairs.append((repo.strip(), target.strip()))
    out: dict[str, str] = {}
    for repo, target in pairs:
        if not _REPO.match(repo):
            raise ValueError(
                f"{source}: repository {shown(repo)} is not owner/name (GitLab: group/sub/name)"
            )
        if not _TARGET.match(target):
            raise ValueError(
                f"{source}: target {shown(target)} of {repo} is not a ReleaseTarget block name "
                "(lower-case letters, digits, -)"
            )
        out[repo.lower()] = target
    return out


def read_repositories_file(path: str) -> dict[str, str]:
    import yaml

    field = f"repositories file {path}"
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"{field} cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{field} is not YAML ({type(exc).__name__})") from None
    repos = data.get("repositories") if isinstance(data, dict) else None
    if not isinstance(repos, dict) or not repos:
        raise ValueError(f"{field}: expected a mapping `repositories: {{owner/name: target, ...}}`")
    return parse_repositories(repos, field)


@dataclasses.dataclass(frozen=True)
class WebhookSettings:
    """Receiver configuration. `from_env()` reads the SHIPYARD_* variables."""

    secret_block: str = DEFAULT_SECRET_BLOCK
    tag_pattern: str = RELEASE_TAG_PATTERN
    repositories: dict[str, str] = dataclasses.field(default_factory=dict)
    journal: str | None = None  # path of the journal; default $SHIPYARD_HOME/webhook/journal.db
    max_body: int = DEFAULT_MAX_BODY
    body_timeout_s: float = 10.0  # the whole body must arrive within this
    # Connections (connections.py): the request line and headers must arrive within
    # header_timeout_s; connections still sending them are capped per client address and in
    # all (a new one over a cap sheds the oldest); requests whose headers arrived are capped
    # at max_connections (more at once are answered 503).
    header_timeout_s: float = 5.0
    max_pending_per_client: int = 32
    max_pending: int = 512
    max_connections: int = 100
    secret_ttl_s: float = 60.0
    # Dispatch: retries of Prefect calls (exponential backoff up to retry_max_s, forever).
    retry_first_s: float = 0.5
    retry_max_s: float = 30.0
    dispatch_parallel: int = 4
    # A GitHub `create` (no commit) waits this long for the `push` of the same tag.
    create_wait_s: float = 20.0
    # Redrive: how often to ask Prefect what became of emitted events, how long to keep
    # asking, and how many times an event whose trigger action failed is emitted again.
    confirm_every_s: float = 10.0
    confirm_for_s: float = 3600.0
    max_attempts: int = 3
    # Retention of the claims in Prefect and of the journal's finished rows. GitHub lets a
    # delivery be redelivered for 3 days; tags are kept longer so that a captured old push
    # cannot re-release a commit after a deletion.
    delivery_retention_s: float = 7 * 86400
    tag_retention_s: float = 365 * 86400
    cleanup_every_s: float = 3600.0

    @classmethod
    def from_env(cls, repos: list[str] | None = None, **overrides: Any) -> WebhookSettings:
        values: dict[str, Any] = {
            "secret_block": os.environ.get(SECRET_BLOCK_ENV) or DEFAULT_SECRET_BLOCK,
            "tag_pattern": os.environ.get(TAG_PATTERN_ENV) or RELEASE_TAG_PATTERN,
            "journal": os.environ.get(JOURNAL_ENV) or None,
        }
        repositories: dict[str, str] = {}
        repos_file = overrides.pop("repos_file", None) or os.environ.get(REPOS_FILE_ENV)
        if repos_file:
            repositories.update(read_repositories_file(repos_file))
        if os.environ.get(REPOS_ENV):
            repositories.update(parse_repositories(os.environ[REPOS_ENV].split(","), REPOS_ENV))
        if repos:
            repositories.update(parse_repositories(repos, "--repo"))
        values["repositories"] = repositories
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def compiled_pattern(self) -> re.Pattern[str]:
        """The release-tag pattern, ASCII-only, applied to the whole tag (`fullmatch`)."""
        return compile_tag_pattern(
            self.tag_pattern, field=f"tag pattern ({TAG_PATTERN_ENV} or --tag-pattern)"
        )

    def journal_path(self) -> Path:
        if self.journal:
            return Path(self.journal)
        home = os.environ.get("SHIPYARD_HOME") or str(Path.home() / ".shipyard")
        return Path(home) / "webhook" / "journal.db"

    def target_of(self, repository: str) -> str | None:
        return self.repositories.get(repository.lower())
