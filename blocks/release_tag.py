"""What a release tag is: one pattern shared by the webhook receiver, the CLI and the UI.

`vMAJOR.MINOR.PATCH` in ASCII digits, matched against the whole string. Python's `\\d`
matches any Unicode decimal digit (full-width `８`, Arabic-Indic `٨`) and `$` matches
before a trailing newline; both would let a look-alike tag through that slugs to the same
revision name as a real one. So the pattern spells `[0-9]`, is anchored with `\\A...\\Z`,
and is matched with `re.fullmatch`.
"""  # noqa: RUF002 - the full-width digit is the look-alike this module keeps out

from __future__ import annotations

import os
import re

RELEASE_TAG_PATTERN = r"\Av[0-9]+\.[0-9]+\.[0-9]+\Z"
RELEASE_TAG_MAX_LENGTH = 128
RELEASE_TAG_EXAMPLE = "v1.4.0"
TAG_PATTERN_ENV = "SHIPYARD_RELEASE_TAG_PATTERN"  # a team's own pattern, for every entry point

_COMPILED = re.compile(RELEASE_TAG_PATTERN, re.ASCII)
_SHOWN = 60  # characters of a bad value quoted back in an error


def shown(value: object, limit: int = _SHOWN) -> str:
    """A user-supplied value safe to put in a message or a log line: escaped, truncated."""
    text = value if isinstance(value, str) else repr(value)
    cut = text[:limit]
    quoted = cut.encode("unicode_escape").decode("ascii").replace("'", "\\'")
    more = f"... ({len(text)} characters)" if len(text) > limit else ""
    return f"'{quoted}'{more}"


def compile_tag_pattern(
    pattern: str | None = None, *, field: str = "tag pattern"
) -> re.Pattern[str]:
    """A custom release-tag pattern, compiled ASCII-only (`\\d` is `[0-9]`).

    It is applied with `fullmatch`, so it need not be anchored. Raises ValueError naming
    `field` when it is not a regular expression.
    """
    if pattern is None or pattern == RELEASE_TAG_PATTERN:
        return _COMPILED
    try:
        return re.compile(pattern, re.ASCII)
    except re.error as exc:
        raise ValueError(
            f"{field} {shown(pattern)} is not a valid regular expression ({exc}); "
            f"the default is {RELEASE_TAG_PATTERN!r}"
        ) from None


def validate_release_tag(
    tag: str, *, field: str = "git_tag", pattern: re.Pattern[str] | None = None
) -> str:
    """Return `tag` if it is a release tag, else raise ValueError naming field, value and fix."""
    compiled = pattern or _COMPILED
    if not isinstance(tag, str):
        raise ValueError(
            f"{field} must be a string like {RELEASE_TAG_EXAMPLE!r}, got {type(tag).__name__}"
        )
    if len(tag) > RELEASE_TAG_MAX_LENGTH:
        raise ValueError(
            f"{field} {shown(tag)} is longer than {RELEASE_TAG_MAX_LENGTH} characters: "
            f"use a tag like {RELEASE_TAG_EXAMPLE!r}"
        )
    if compiled.fullmatch(tag) is None:
        raise ValueError(
            f"{field} {shown(tag)} is not a release tag: it must match "
            f"{compiled.pattern!r} as a whole, ASCII digits only, e.g. {RELEASE_TAG_EXAMPLE!r}"
        )
    return tag


def configured_tag_pattern() -> re.Pattern[str]:
    """The release-tag pattern in force: $SHIPYARD_RELEASE_TAG_PATTERN, else the default.

    The webhook, the CLI and the release flow (so a run from the UI too) all check with it.
    """
    return compile_tag_pattern(os.environ.get(TAG_PATTERN_ENV) or None, field=TAG_PATTERN_ENV)
