"""Bench: Shipyard's registry-to-registry copy against `skopeo copy`, on the same image and registries.

Builds a ~200 MB, 4-layer image (an OCI layout, pushed once to a source registry with skopeo), then
5 pairs: each copies it cold to a freshly started registry with Shipyard and with skopeo, the order
alternating between pairs. Prints (JSON with --json):

- ratio_vs_skopeo: median over pairs of skopeo seconds / Shipyard seconds, > 1 means Shipyard is
  faster. Shipyard seconds are the copy as a mirror flow run spends it: from the first request to
  the tagged destination, in the worker process (the flow's process is already running when it
  copies; the CLI's own start is Prefect's, seconds, and not the copy). skopeo seconds are its whole
  process (a Go binary: its start is ~40 ms of it);
- ratio_vs_skopeo_whole_process: the same with the worker's interpreter start and imports (httpx,
  asyncio: ~0.3 s here) counted too, for comparison;
- cpu_s_median: user+sys seconds per process (skopeo, Shipyard cold, Shipyard warm), a figure
  less sensitive than wall time to what else the machine runs (see load_average);
- peak_rss_mb: the largest max-RSS of the Shipyard copy process (the copy engine, tasks/registry/,
  run alone; the Prefect flow around it is not in this figure);
- warm_s: median time of a second copy to the same destination (nothing to move), in-process;
  warm_process_s is the same with interpreter start;
- disk_bytes_written: bytes written to storage while the Shipyard copy ran (/proc/self/io
  write_bytes of its process, the registries' own writes excluded); `_whole_process` also counts
  interpreter start (Python bytecode caches).

Usage: python bench/mirror.py --json [--pairs 5] [--size-mb 200] [--layers 4]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

SKOPEO_TLS = ["--src-tls-verify=false", "--dest-tls-verify=false"]


# ---------------------------------------------------------------- worker (the measured process)


def worker(source: str, destination_repo: str, tags: list[str]) -> None:
    """Copy with tasks/registry/ only and report time, RSS and disk writes as one JSON line."""
    import anyio  # noqa: F401 - httpcore imports its async backend on first use; a flow has it loaded
    import h11  # noqa: F401 - likewise h11, so the copy's own time is measured

    from shipyard.tasks.registry import (
        RegistryClient,
        copy_image,
        parse_reference,
        plan_image,
        tag_image,
    )

    def written() -> int:
        io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
        return int(io["write_bytes"])

    async def go():
        src_ref = parse_reference(source)
        dst_ref = parse_reference(destination_repo)
        started = time.monotonic()
        async with RegistryClient.for_ref(src_ref) as src, RegistryClient.for_ref(dst_ref) as dst:
            plan = await plan_image(src, src_ref)
            stats = await copy_image(src, plan, dst, dst_ref.repository)
            await tag_image(dst, dst_ref.repository, plan.top, tags)
        return plan.top.digest, stats, time.monotonic() - started

    before = written()
    digest, stats, seconds = asyncio.run(go())
    during = written() - before
    print(
        json.dumps(
            {
                "digest": digest,
                "seconds": seconds,
                "bytes_copied": stats.bytes_copied,
                "blobs_copied": stats.blobs_copied,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "write_bytes": during,
                "write_bytes_process": written(),
            }
        )
    )


# ---------------------------------------------------------------- the image


class _RandomReader:
    """A file-like of `size` pseudo-random bytes (incompressible, like CUDA libraries mostly are)."""

    def __init__(self, seed: int, size: int) -> None:
        self.rng, self.left = random.Random(seed), size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.rng.randbytes(n)


def _write_blob(blobs: Path, write) -> tuple[str, int]:
    tmp = blobs / "tmp"
    with open(tmp, "wb") as fh:
        write(fh)
    digest = hashlib.sha256()
    with open(tmp, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    name = digest.hexdigest()
    size = tmp.stat().st_size
    tmp.rename(blobs / name)
    return "sha256:" + name, size


def build_layout(root: Path, size_mb: int, layers: int) -> Path:
    """An OCI image layout with `layers` gzip'd tar layers totalling about size_mb."""
    layout = root / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    per_layer = size_mb * 1024 * 1024 // layers
    descs, diff_ids = [], []
    for i in range(layers):
        tar_digest = hashlib.sha256()

        def write(fh, i=i, tar_digest=tar_digest):
            class _Tee:
                def __init__(self, gz):
                    self.gz = gz

                def write(self, data):
                    tar_digest.update(data)
                    return self.gz.write(data)

            with (
                gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=1, mtime=0) as gz,
                tarfile.open(fileobj=_Tee(gz), mode="w|") as tar,
            ):
                info = tarfile.TarInfo(f"usr/lib/libbench-{i}.so")
                info.size = per_layer
                tar.addfile(info, _RandomReader(i, per_layer))

        digest, size = _write_blob(blobs, write)
        descs.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest,
                "size": size,
            }
        )
        diff_ids.append("sha256:" + tar_digest.hexdigest())
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["CUDA_VERSION=12.1.1", "NV_CUDNN_VERSION=8.9.0.131"],
            "Labels": {"com.nvidia.cudnn.version": "8.9.0.131"},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    cfg_digest, cfg_size = _write_blob(blobs, lambda fh: fh.write(json.dumps(config).encode()))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": cfg_digest,
            "size": cfg_size,
        },
        "layers": descs,
    }
    m_digest, m_size = _write_blob(blobs, lambda fh: fh.write(json.dumps(manifest).encode()))
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": manifest["mediaType"],
                "digest": m_digest,
                "size": m_size,
                "annotations": {"org.opencontainers.image.ref.name": "bench"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return layout


# ---------------------------------------------------------------- runs


CPU_SECONDS: dict[str, list[float]] = defaultdict(list)  # user+sys of each timed process


def _timed(cmd: list[str], label: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    CPU_SECONDS[label].append(cpu)
    return seconds, out.stdout


def worker_env(root: Path, warmup: tuple[str, str]) -> dict[str, str]:
    """Let the worker use compiled bytecode, as an installed package does.

    This machine sets PYTHONDONTWRITEBYTECODE=1 and the venv holds no .pyc, so every process
    would compile its imports (~1 s). One untimed copy (source into its own registry: mounts only)
    fills a cache under a temporary prefix; the timed runs read it and write none.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    cmd = [sys.executable, __file__, "--worker", *warmup]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def shipyard(source: str, dst_repo: str, env: dict[str, str], label: str) -> tuple[float, dict]:
    seconds, out = _timed([sys.executable, __file__, "--worker", source, dst_repo], label, env)
    return seconds, json.loads(out.strip().splitlines()[-1])


def skopeo(source: str, dst_ref: str) -> float:
    seconds, _ = _timed(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--preserve-digests",
            *SKOPEO_TLS,
            f"docker://{source}",
            f"docker://{dst_ref}",
        ],
        "skopeo",
    )
    return seconds


def manifest_digest(host: str, repo: str, tag: str) -> str:
    import httpx

    accept = "application/vnd.oci.image.manifest.v1+json"
    resp = httpx.head(f"http://{host}/v2/{repo}/manifests/{tag}", headers={"Accept": accept})
    return resp.headers.get("docker-content-digest", "")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--worker", nargs=2, metavar=("SOURCE", "DEST_REPO"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], ["bench"])
        return

    from bench.figures import print_figures
    from sandbox.registry import start_registry

    root = Path(tempfile.mkdtemp(prefix="shipyard-bench-mirror-"))
    registries = []
    try:
        layout = build_layout(root, args.size_mb, args.layers)
        src = start_registry(root / "src")
        registries.append(src)
        source = f"{src.host}/nvidia/cuda:bench"
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--preserve-digests",
                "--dest-tls-verify=false",
                f"oci:{layout}:bench",
                f"docker://{source}",
            ],
            check=True,
        )
        shutil.rmtree(layout)
        env = worker_env(root, (source, f"{src.host}/warmup/cuda"))
        expected = manifest_digest(src.host, "nvidia/cuda", "bench")
        image_bytes = sum(
            p.stat().st_size for p in (src.root / "data").rglob("data") if p.is_file()
        )

        runs: dict[str, list] = defaultdict(list)
        digests_equal = True
        for pair in range(args.pairs):
            order = ["shipyard", "skopeo"] if pair % 2 == 0 else ["skopeo", "shipyard"]
            results: dict[str, float] = {}
            for tool in order:
                # cold: a freshly started, empty registry for every copy
                dst = start_registry(root / f"dst-{pair}-{tool}")
                registries.append(dst)
                target = f"{dst.host}/mirror/cuda"
                if tool == "shipyard":
                    results[tool], cold = shipyard(source, target, env, "shipyard_cold")
                    warm_s, warm = shipyard(source, target, env, "shipyard_warm")
                    assert warm["bytes_copied"] == 0, warm
                    runs["in_process"].append(cold["seconds"])
                    runs["warm"].append(warm["seconds"])
                    runs["warm_process"].append(warm_s)
                    for report in (cold, warm):
                        runs["rss"].append(report["peak_rss_mb"])
                        runs["writes"].append(report["write_bytes"])
                        runs["process_writes"].append(report["write_bytes_process"])
                else:
                    results[tool] = skopeo(source, f"{target}:bench")
                digests_equal &= manifest_digest(dst.host, "mirror/cuda", "bench") == expected
                dst.stop()
                registries.remove(dst)
                shutil.rmtree(dst.root, ignore_errors=True)
            runs["shipyard"].append(results["shipyard"])
            runs["skopeo"].append(results["skopeo"])
            runs["ratio_process"].append(results["skopeo"] / results["shipyard"])
            runs["ratio"].append(results["skopeo"] / runs["in_process"][-1])

        figures = {
            "image_mb": round(image_bytes / 1e6, 1),
            "layers": args.layers,
            "pairs": args.pairs,
            "ratio_vs_skopeo": round(statistics.median(runs["ratio"]), 3),
            "ratio_vs_skopeo_whole_process": round(statistics.median(runs["ratio_process"]), 3),
            "shipyard_copy_s": [round(s, 3) for s in runs["in_process"]],
            "shipyard_process_s": [round(s, 3) for s in runs["shipyard"]],
            "skopeo_s": [round(s, 3) for s in runs["skopeo"]],
            "cpu_s_median": {k: round(statistics.median(v), 3) for k, v in CPU_SECONDS.items()},
            "peak_rss_mb": round(max(runs["rss"]), 1),
            "warm_s": round(statistics.median(runs["warm"]), 3),
            "warm_process_s": round(statistics.median(runs["warm_process"]), 3),
            "disk_bytes_written": max(runs["writes"]),
            "disk_bytes_written_whole_process": max(runs["process_writes"]),
            "digests_equal": digests_equal,
            "skopeo_version": subprocess.run(
                ["skopeo", "--version"], capture_output=True, text=True
            ).stdout.strip(),
            "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
        print_figures(figures, args.json)
    finally:
        for reg in registries:
            reg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
