"""The sandbox's Secret Manager entries on disk, so `shipyard sandbox down` then `up` keeps them
(issue 23: a restart lost the entry `shipyard setup` had added; the next release's revisions
failed their secret access check and the service wedged).

Kept as Secret Manager keeps secrets: encrypted at rest. The entries are a Fernet token (AES in
CBC mode with an HMAC, from the `cryptography` package) in DIR/secrets.json, its key in
DIR/secrets.key, both 0600, written atomically (a new file, then a rename) on every change, read
when the emulator starts. No value ever reaches a log line or an answer; the admin route answers
a digest only (app.py). DIR is the sandbox's `emulator-state` folder (sandbox/manager.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

SECRETS_FILE = "secrets.json"
KEY_FILE = "secrets.key"


class SecretFileError(RuntimeError):
    """The stored entries cannot be read back (a damaged file, or the key is not the one that
    wrote them); the message says which file and what to do, never a value."""


def _write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".new")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(scratch, path)


class SecretFile:
    """Secret Manager entries (name -> value) kept in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _fernet(self) -> Fernet:
        key_path = self.directory / KEY_FILE
        if not key_path.exists():
            _write_private(key_path, Fernet.generate_key())
        return Fernet(key_path.read_bytes().strip())

    def load(self) -> dict[str, str]:
        """The entries stored ({} when none were)."""
        path = self.directory / SECRETS_FILE
        if not path.exists():
            return {}
        try:
            plain = self._fernet().decrypt(path.read_bytes().strip())
            entries = json.loads(plain)
        except (InvalidToken, ValueError):
            raise SecretFileError(
                f"{path}: the stored Secret Manager entries cannot be read with {KEY_FILE} "
                f"beside it; remove both files and run `shipyard setup` again to add them"
            ) from None
        if not isinstance(entries, dict):
            raise SecretFileError(f"{path}: not a map of entries; remove it, then `shipyard setup`")
        return {str(k): str(v) for k, v in entries.items()}

    def save(self, entries: dict[str, str]) -> None:
        token = self._fernet().encrypt(json.dumps(entries, sort_keys=True).encode())
        _write_private(self.directory / SECRETS_FILE, token)
