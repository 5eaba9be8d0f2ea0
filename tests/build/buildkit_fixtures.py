"""Helpers for the build tests: a throwaway git repository of the example, (the NVIDIA-like base comes from sandbox/seed.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "page-service"
_GIT = ["git", "-c", "user.email=tests@shipyard.invalid", "-c", "user.name=shipyard tests"]


class AppRepo:
    """A git repository holding a copy of examples/page-service under `page-service/`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = "page-service"
        shutil.copytree(
            EXAMPLE, root / self.dir, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        subprocess.run([*_GIT, "init", "-q", "-b", "main", str(root)], check=True)
        self.commit("the sample page service")

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def commit(self, message: str) -> str:
        subprocess.run([*_GIT, "-C", str(self.root), "add", "-A"], check=True)
        subprocess.run([*_GIT, "-C", str(self.root), "commit", "-q", "-m", message], check=True)
        return self.head()

    def head(self) -> str:
        return subprocess.check_output(
            ["git", "-C", str(self.root), "rev-parse", "HEAD"], text=True
        ).strip()

    def edit(self, name: str, append: str, message: str) -> str:
        path = self.root / self.dir / name
        path.write_text(path.read_text() + append)
        return self.commit(message)
