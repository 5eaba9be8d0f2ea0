"""A service's own git repository, made by a test (the CLI tests' `make_repo`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

_GIT = ["git", "-c", "user.email=tests@shipyard.invalid", "-c", "user.name=shipyard tests"]


class ServiceRepo:
    """A git repository of a tiny service: the files given, committed."""

    def __init__(self, root: Path, files: dict[str, str]) -> None:
        self.root = root
        root.mkdir(parents=True)
        subprocess.run([*_GIT, "init", "-q", "-b", "main", str(root)], check=True)
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        self.commit("the service")

    def commit(self, message: str) -> None:
        subprocess.run([*_GIT, "-C", str(self.root), "add", "-A"], check=True)
        subprocess.run([*_GIT, "-C", str(self.root), "commit", "-q", "-m", message], check=True)


PYTHON_SERVICE = {
    "requirements.txt": "fastapi==0.115.0\nuvicorn==0.30.0\n",
    "main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n",
}
