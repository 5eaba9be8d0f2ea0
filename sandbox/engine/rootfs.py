"""The base root filesystem: Debian bookworm (minbase) with the CA certificates, no Python.

Bootstrapped with `mmdebstrap` where it is installed (apt's parallel downloads and one
unpacking pass: about a third faster than debootstrap here, 67 s against ~105 s at load ~5),
else `debootstrap --variant=minbase`; both give the same package set from the same mirror.

It stands in for `nvidia/cuda:…-runtime-ubuntu22.04`'s filesystem (no Docker Hub here); the
seed (sandbox/seed.py) pushes it with NVIDIA's config. Where a Dockerfile can notice, it keeps the
real base's contract: no python3 (the CUDA runtime image has none: a Dockerfile installs it), the
CA certificates and a working apt, and the library paths NVIDIA's Dockerfile declares
(/etc/ld.so.conf.d/nvidia.conf, see NVIDIA_LD_CONF). What it cannot match (Debian 12 against
Ubuntu 22.04, so the python3 apt brings is 3.11 with a PEP 668 marker instead of 3.10 without)
is `STAND_IN_DIFFERENCE` in sandbox/seed.py, which the sandbox's builds print before building. Built once and cached as a gzip layer
under $SHIPYARD_HOME/rootfs (or $SHIPYARD_ROOTFS_CACHE: tests and CI point it at a stable
path so a fresh test home does not bootstrap again). What the host knows about reaching the
package registries is handed in, never written into this repository: the Debian mirror comes
from the host's apt sources, the host's extra CA certificates (/usr/local/share/ca-certificates)
are installed into the filesystem so apt and pip inside a build trust the same proxies.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
# No python3: nvidia/cuda's runtime images have none (a Dockerfile that needs it installs it).
PACKAGES = ("ca-certificates",)
# NVIDIA's base Dockerfile ("Required for nvidia-docker v1"): gitlab.com/nvidia/container-images/
# cuda dist/12.x/ubuntu2204/base/Dockerfile, `echo "/usr/local/nvidia/lib" >> /etc/ld.so.conf.d/
# nvidia.conf` and the same for lib64 (mirrored in wordslab-org/wordslab
# doc/infra/containers/nvidia-cuda-base-install.sh).
NVIDIA_LD_CONF = "/usr/local/nvidia/lib\n/usr/local/nvidia/lib64\n"
# Bumped whenever what goes into the layer changes, so a machine's cached layer is rebuilt.
LAYER_VERSION = 2
CACHE_ENV = "SHIPYARD_ROOTFS_CACHE"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


@dataclass(frozen=True)
class RootfsLayer:
    path: Path  # the gzip'd tar
    digest: str  # sha256 of the gzip'd tar (the layer's blob digest)
    diff_id: str  # sha256 of the uncompressed tar
    size: int
    built_s: float  # 0.0 when it came from the cache


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    home = Path(os.environ.get("SHIPYARD_HOME", Path.home() / ".shipyard"))
    return home / "rootfs"


def host_debian_mirror() -> str:
    """The first Debian archive URI in the host's apt sources (one-line and deb822 formats)."""
    files: list[Path] = []
    for source in APT_SOURCES:
        if source.is_dir():
            files += sorted(p for p in source.iterdir() if p.suffix in (".list", ".sources"))
        elif source.exists():
            files.append(source)
    for path in files:
        text = path.read_text(errors="replace")
        for match in re.finditer(
            r"^\s*(?:deb\s+(?:\[[^\]]*\]\s+)?|URIs:\s*)(\S+)", text, re.MULTILINE
        ):
            uri = match.group(1)
            if "security" not in uri and "debian" in uri:
                return uri
    raise RuntimeError(
        "no Debian mirror in the host's apt sources (/etc/apt/sources.list*): the base root "
        "filesystem is bootstrapped from the mirror apt uses; add one there"
    )


# The host's apt settings a bootstrap needs to reach the mirror the way the host does.
HOST_APT_KEYS = ("Acquire::http::Proxy", "Acquire::https::Proxy")


def host_apt_options() -> list[str]:
    """The host's proxy settings for apt (`apt-config dump`), as `--aptopt` for mmdebstrap
    (debootstrap's wget reads the proxy from the environment instead)."""
    try:
        dump = subprocess.run(
            ["apt-config", "dump"], capture_output=True, text=True, check=False, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    options = []
    for line in dump.splitlines():
        key, _, value = line.partition(" ")
        if key in HOST_APT_KEYS and value.strip('";'):
            options.append(f"--aptopt={key} {value.rstrip(';')}")
    return options


MERGED_USR_HOOKS = Path("/usr/share/mmdebstrap/hooks/merged-usr")


def bootstrap_command(target: Path, mirror: str) -> list[str]:
    """mmdebstrap where installed, else debootstrap (see the module's docstring)."""
    include = f"--include={','.join(PACKAGES)}"
    if shutil.which("mmdebstrap") and MERGED_USR_HOOKS.is_dir():
        return [
            "mmdebstrap",
            "--variant=minbase",
            include,
            "--dpkgopt=force-unsafe-io",  # a throwaway tree: no fsync per file
            # merged /usr by symlinks as debootstrap makes it, not the usrmerge package (which
            # would pull perl into the image: +48 MB)
            f"--hook-dir={MERGED_USR_HOOKS}",
            *host_apt_options(),
            SUITE,
            str(target),
            mirror,
        ]
    return ["debootstrap", "--variant=minbase", include, SUITE, str(target), mirror]


def cache_key() -> str:
    host_cas = sorted(p.name for p in HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []
    text = json.dumps({"suite": SUITE, "packages": PACKAGES, "cas": host_cas, "v": LAYER_VERSION})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _run(args: list[str], log: Path) -> None:
    with open(log, "ab") as out:
        proc = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(
            f"{' '.join(args[:3])} … failed with code {proc.returncode}: {' | '.join(tail)} "
            f"(full log: {log})"
        )


def _tar_layer(rootfs: Path, out: Path) -> tuple[str, str, int]:
    """Write rootfs as a gzip'd tar at `out`; return (digest, diff_id, size)."""
    raw = out.with_suffix(".tmp.tar")
    with tarfile.open(raw, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(rootfs.iterdir()):
            # /dev, /proc and /sys are the runtime's to fill: keep their directories only.
            if entry.name in ("dev", "proc", "sys"):
                tar.add(entry, arcname=entry.name, recursive=False)
            else:
                tar.add(entry, arcname=entry.name)
    diff = hashlib.sha256()
    blob = hashlib.sha256()
    with (
        open(raw, "rb") as src,
        open(out, "wb") as dst,
        gzip.GzipFile(fileobj=dst, mode="wb", compresslevel=1, mtime=0) as gz,
    ):
        while chunk := src.read(1 << 20):
            diff.update(chunk)
            gz.write(chunk)
    raw.unlink()
    with open(out, "rb") as f:
        while chunk := f.read(1 << 20):
            blob.update(chunk)
    return f"sha256:{blob.hexdigest()}", f"sha256:{diff.hexdigest()}", out.stat().st_size


def ensure_rootfs() -> RootfsLayer:
    """The cached layer, bootstrapping it first when absent (needs root and mmdebstrap or
    debootstrap)."""
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    key = cache_key()
    layer_path = directory / f"{SUITE}-minbase-{key}.tar.gz"
    meta_path = layer_path.with_suffix(".json")
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if layer_path.exists() and meta_path.exists():
            meta = json.loads(meta_path.read_text())
            return RootfsLayer(layer_path, meta["digest"], meta["diff_id"], meta["size"], 0.0)
        if shutil.which("mmdebstrap") is None and shutil.which("debootstrap") is None:
            raise RuntimeError(
                "neither mmdebstrap nor debootstrap is installed: the base root filesystem is "
                "built from Debian packages (apt-get install mmdebstrap, or `make setup`)"
            )
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=directory))
        target = work / "root"
        log = directory / "bootstrap.log"
        try:
            _run(bootstrap_command(target, host_debian_mirror()), log)
            # mmdebstrap keeps its --aptopt/--dpkgopt there: the host's settings stay out of
            # the image, as with debootstrap.
            for kept in ("etc/apt/apt.conf.d/99mmdebstrap", "etc/dpkg/dpkg.cfg.d/99mmdebstrap"):
                (target / kept).unlink(missing_ok=True)
            if HOST_CA_DIR.is_dir() and any(HOST_CA_DIR.glob("*.crt")):
                dest = target / "usr/local/share/ca-certificates"
                dest.mkdir(parents=True, exist_ok=True)
                for cert in HOST_CA_DIR.glob("*.crt"):
                    shutil.copy2(cert, dest / cert.name)
                _run(["chroot", str(target), "update-ca-certificates"], log)
            ld_conf = target / "etc/ld.so.conf.d/nvidia.conf"
            ld_conf.parent.mkdir(parents=True, exist_ok=True)
            ld_conf.write_text(NVIDIA_LD_CONF)
            # Leave no apt lists or caches in the layer (the base tier runs apt-get update).
            for junk in ("var/lib/apt/lists", "var/cache/apt/archives"):
                for item in (target / junk).glob("*"):
                    if item.is_file():
                        item.unlink()
            digest, diff_id, size = _tar_layer(target, layer_path)
        finally:
            for mount in ("proc", "sys"):  # left mounted when debootstrap stops halfway
                subprocess.run(["umount", "-l", str(target / mount)], capture_output=True)
            shutil.rmtree(work, ignore_errors=True)
        meta = {"digest": digest, "diff_id": diff_id, "size": size}
        meta_path.write_text(json.dumps(meta))
        return RootfsLayer(layer_path, digest, diff_id, size, round(time.monotonic() - started, 1))


def main() -> None:
    """`python -m sandbox.engine.rootfs`: build (or find) the cached layer; print where it is."""
    layer = ensure_rootfs()
    how = f"built in {layer.built_s:.0f} s" if layer.built_s else "cached"
    print(f"base root filesystem: {layer.path} ({layer.size / 1e6:.0f} MB, {how})")


if __name__ == "__main__":
    main()
