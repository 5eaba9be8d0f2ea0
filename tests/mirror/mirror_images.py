"""Build small NVIDIA-like images in memory and push them with our own client (no daemon)."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import random
import tarfile
from dataclasses import dataclass

from sandbox import seed
from shipyard.tasks.registry import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
    RegistryClient,
    RegistryCredentials,
    parse_reference,
    sha256_digest,
)

LAYER_TYPES = {
    OCI_MANIFEST: "application/vnd.oci.image.layer.v1.tar+gzip",
    DOCKER_MANIFEST: "application/vnd.docker.image.rootfs.diff.tar.gzip",
}
CONFIG_TYPES = {
    OCI_MANIFEST: "application/vnd.oci.image.config.v1+json",
    DOCKER_MANIFEST: "application/vnd.docker.container.image.v1+json",
}


def layer_bytes(seed: int, size: int) -> tuple[bytes, str]:
    """A gzipped tar with one file of `size` random bytes; returns (blob, diff_id)."""
    data = random.Random(seed).randbytes(size)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(f"layer-{seed}.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=1, mtime=0), sha256_digest(raw)


def nvidia_config(
    diff_ids: list[str], *, cudnn: str | None, cuda: str = "12.1.1", arch: str = "amd64"
) -> bytes:
    """The config of sandbox/seed.py's upstream image (one shape for the demo and the tests)."""
    return json.dumps(
        seed.nvidia_config(diff_ids, cudnn=cudnn, cuda=cuda, arch=arch), sort_keys=True
    ).encode()


@dataclass
class Pushed:
    ref: str  # registry/repo:tag
    digest: str
    manifest: Manifest
    blobs: list[str]  # digests of config + layers (all children for an index)


async def push_image(
    client: RegistryClient,
    repo: str,
    tag: str | None,
    *,
    seed: int = 1,
    cudnn: str | None = "8.9.0.131",
    arch: str = "amd64",
    media_type: str = OCI_MANIFEST,
    layers: int = 2,
    layer_size: int = 48 * 1024,
) -> Pushed:
    blobs, diff_ids, descs = [], [], []
    for i in range(layers):
        blob, diff_id = layer_bytes(seed * 100 + i, layer_size)
        desc = await client.upload_bytes(repo, blob, LAYER_TYPES[media_type])
        descs.append({"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size})
        diff_ids.append(diff_id)
        blobs.append(desc.digest)
    cfg = await client.upload_bytes(
        repo, nvidia_config(diff_ids, cudnn=cudnn, arch=arch), CONFIG_TYPES[media_type]
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": cfg.media_type, "digest": cfg.digest, "size": cfg.size},
        "layers": descs,
    }
    raw = json.dumps(manifest, indent=3).encode()
    m = Manifest(media_type, raw, sha256_digest(raw))
    await client.put_manifest(repo, m.digest, m)
    if tag:
        await client.put_manifest(repo, tag, m)
    return Pushed(f"{client.registry}/{repo}:{tag}", m.digest, m, [cfg.digest, *blobs])


async def push_index(
    client: RegistryClient,
    repo: str,
    tag: str,
    *,
    arches: tuple[str, ...] = ("amd64", "arm64"),
    docker: bool = True,
    cudnn: str | None = "8.9.0.131",
    attestations: bool = False,
) -> tuple[Pushed, dict[str, Pushed]]:
    """A Docker manifest list of schema-2 images (docker=True) or an OCI index of OCI images.

    attestations=True: what `docker buildx build --push` makes by default, one attestation
    manifest per image (children["att-<arch>"]), as BuildKit stores them: an OCI image manifest
    with an unknown/unknown config and in-toto layers, listed in the index with platform
    unknown/unknown and the annotations vnd.docker.reference.type/digest
    (docs.docker.com/build/metadata/attestations/attestation-storage).
    """
    image_type, index_type = (DOCKER_MANIFEST, DOCKER_LIST) if docker else (OCI_MANIFEST, OCI_INDEX)
    children = {}
    for n, arch in enumerate(arches):
        children[arch] = await push_image(
            client, repo, None, seed=50 + n, arch=arch, media_type=image_type, cudnn=cudnn
        )
    index = {
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": [
            {
                "mediaType": image_type,
                "digest": c.digest,
                "size": len(c.manifest.raw),
                "platform": {
                    "architecture": arch,
                    "os": "linux",
                    **({"variant": "v8"} if arch == "arm64" else {}),
                },
            }
            for arch, c in children.items()
        ],
    }
    if attestations:
        for arch, image in list(children.items()):
            att = await push_attestation(client, repo, image.digest, seed=len(children))
            children[f"att-{arch}"] = att
            index["manifests"].append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": att.digest,
                    "size": len(att.manifest.raw),
                    "annotations": {
                        "vnd.docker.reference.digest": image.digest,
                        "vnd.docker.reference.type": "attestation-manifest",
                    },
                    "platform": {"architecture": "unknown", "os": "unknown"},
                }
            )
    raw = json.dumps(index, indent=3).encode()
    m = Manifest(index_type, raw, sha256_digest(raw))
    await client.put_manifest(repo, m.digest, m)
    await client.put_manifest(repo, tag, m)
    blobs = [b for c in children.values() for b in c.blobs]
    return Pushed(f"{client.registry}/{repo}:{tag}", m.digest, m, blobs), children


async def push_attestation(client: RegistryClient, repo: str, subject: str, *, seed: int) -> Pushed:
    """A BuildKit attestation manifest (SLSA provenance) for the image `subject`."""
    statement = json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [{"name": f"pkg:docker/{repo}", "digest": {"sha256": subject[7:]}}],
            "predicate": {
                "builder": {"id": ""},
                "buildType": "https://mobyproject.org/buildkit@v1",
            },
            "seed": seed,
        }
    ).encode()
    layer = await client.upload_bytes(repo, statement, "application/vnd.in-toto+json")
    config = json.dumps(
        {
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        }
    ).encode()
    cfg = await client.upload_bytes(repo, config, "application/vnd.oci.image.config.v1+json")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": cfg.media_type, "digest": cfg.digest, "size": cfg.size},
        "layers": [
            {
                "mediaType": layer.media_type,
                "digest": layer.digest,
                "size": layer.size,
                "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
            }
        ],
    }
    raw = json.dumps(manifest, indent=3).encode()
    m = Manifest(OCI_MANIFEST, raw, sha256_digest(raw))
    await client.put_manifest(repo, m.digest, m)
    return Pushed(f"{client.registry}/{repo}@{m.digest}", m.digest, m, [cfg.digest, layer.digest])


def uploads_left(registry, repo: str) -> list[str]:
    """Upload sessions the real registry still holds for `repo`: directories of its storage's
    _uploads with a `startedat` or `data` file (a DELETE removes both; distribution leaves an
    empty hashstates directory behind, which its upload purger ignores)."""
    where = registry.root / "data/docker/registry/v2/repositories" / repo / "_uploads"
    if not where.exists():
        return []
    return sorted(
        p.name for p in where.iterdir() if (p / "startedat").exists() or (p / "data").exists()
    )


def client_for(
    url_or_host: str, credentials: RegistryCredentials | None = None, **kw
) -> RegistryClient:
    host = url_or_host.removeprefix("http://")
    return RegistryClient.for_ref(parse_reference(f"{host}/x"), credentials, **kw)


def run(coro):
    return asyncio.run(coro)
