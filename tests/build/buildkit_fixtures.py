"""Helpers for the build tests: a throwaway git repository of the example, an NVIDIA-like base."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

from sandbox.oci import OCI_CONFIG, OCI_MANIFEST, SandboxRegistry, make_layer

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


def push_nvidia_base(registry_url: str, repo: str = "base-images/cuda") -> str:
    """Push a tiny image whose config looks like nvidia/cuda:12.1.1-cudnn8 (env and label);
    returns its digest."""

    async def go() -> str:
        reg = SandboxRegistry(registry_url)
        try:
            layer = make_layer({"/usr/local/cuda/version.json": (b'{"cuda": "12.1.1"}', 0o644)})
            await reg.put_blob(repo, layer.data)
            config = {
                "architecture": "amd64",
                "os": "linux",
                "config": {
                    "Env": [
                        "PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/bin:/bin",
                        "CUDA_VERSION=12.1.1",
                        "NV_CUDNN_VERSION=8.9.0.131",
                    ],
                    "Labels": {"com.nvidia.cudnn.version": "8.9.0.131"},
                },
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            }
            raw = json.dumps(config).encode()
            config_digest = await reg.put_blob(repo, raw)
            manifest = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(raw)},
                "layers": [
                    {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
                ],
            }
            return await reg.put_manifest(repo, "12.1.1-cudnn8-runtime-ubuntu22.04", manifest)
        finally:
            await reg.aclose()

    return asyncio.run(go())
