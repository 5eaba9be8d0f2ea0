"""The OCI client against real distribution registries (no Prefect flow involved)."""

from __future__ import annotations

import json

import pytest
from mirror_images import client_for, push_image, push_index, run

from shipyard.tasks.errors import is_transient
from shipyard.tasks.registry import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MAX_MANIFEST_BYTES,
    Descriptor,
    DigestMismatch,
    InvalidReference,
    ManifestTooLarge,
    NotFound,
    RegistryAuthError,
    RegistryCredentials,
    RegistryUnavailable,
    UnsupportedMediaType,
    copy_image,
    parse_manifest,
    parse_reference,
    plan_image,
    sha256_digest,
    tag_image,
)

# The user the token_registry fixture's token server knows.
TOKEN_BOT = RegistryCredentials(
    "mirror-bot", "s3cret-Token-pw", "DockerRegistryCredentials block 'tok'"
)


def test_references_parse_like_docker():
    ref = parse_reference("nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04")
    assert (ref.registry, ref.repository, ref.tag) == (
        "registry-1.docker.io",
        "nvidia/cuda",
        "12.1.1-cudnn8-runtime-ubuntu22.04",
    )
    assert parse_reference("ubuntu").repository == "library/ubuntu"
    ref = parse_reference("127.0.0.1:5000/base/cuda@sha256:" + "a" * 64)
    assert (ref.registry, ref.reference, ref.base_url) == (
        "127.0.0.1:5000",
        "sha256:" + "a" * 64,
        "http://127.0.0.1:5000",
    )
    assert parse_reference("europe-docker.pkg.dev/p/base/cuda:x").base_url.startswith("https://")


@pytest.mark.parametrize(
    "text, names",
    [
        ("", "empty"),
        ("ghcr.io/Acme/cuda:1", "'Acme'"),
        ("nvidia/cuda:-bad", "tag '-bad'"),
        ("nvidia/cuda@sha256:xyz", "digest 'sha256:xyz'"),
        ("bad_host:99999999/x", "registry"),
    ],
)
def test_malformed_references_say_what_and_how(text, names):
    with pytest.raises(InvalidReference) as err:
        parse_reference(text, field="source")
    assert (
        "source" in str(err.value)
        and names in str(err.value)
        and "expected [REGISTRY" in str(err.value)
    )
    assert not is_transient(err.value)


def test_unsupported_media_types_are_named():
    schema1 = json.dumps({"schemaVersion": 1, "name": "x"}).encode()
    with pytest.raises(UnsupportedMediaType, match=r"prettyjws.*schema 1"):
        parse_manifest(
            schema1, "application/vnd.docker.distribution.manifest.v1+prettyjws", where="r/x:1"
        )
    with pytest.raises(UnsupportedMediaType, match="not JSON"):
        parse_manifest(b"<html>", "text/html", where="r/x:1")


def test_single_arch_copy_preserves_digests_and_second_copy_moves_nothing(src, dst):
    async def scenario():
        async with client_for(src.host) as s, client_for(dst.host) as d:
            pushed = await push_image(s, "nvidia/cuda", "12.1.1-cudnn8", layers=3)
            plan = await plan_image(s, parse_reference(pushed.ref))
            first = await copy_image(s, plan, d, "base/cuda")
            await tag_image(d, "base/cuda", plan.top, ["12.1.1-cudnn8"])
            second = await copy_image(s, plan, d, "base/cuda")
            mirrored = await d.get_manifest("base/cuda", "12.1.1-cudnn8")
            present = [await d.blob_exists("base/cuda", b) for b in pushed.blobs]
            return pushed, first, second, mirrored, present

    pushed, first, second, mirrored, present = run(scenario())
    assert mirrored.digest == pushed.digest and mirrored.raw == pushed.manifest.raw
    assert all(present) and first.blobs_copied == 4 and first.bytes_copied == first.bytes_total > 0
    assert (
        second.blobs_copied,
        second.bytes_copied,
        second.blobs_skipped,
        second.manifests_pushed,
    ) == (0, 0, 4, 0)


def test_multi_arch_all_platforms_or_one(src, dst):
    async def scenario():
        async with client_for(src.host) as s, client_for(dst.host) as d:
            index, children = await push_index(s, "nvidia/cuda", "multi")
            ref = parse_reference(index.ref)
            all_plan = await plan_image(s, ref)
            await copy_image(s, all_plan, d, "all/cuda")
            await tag_image(d, "all/cuda", all_plan.top, ["multi"])
            arm_plan = await plan_image(s, ref, ["linux/arm64"])
            await copy_image(s, arm_plan, d, "arm/cuda")
            got_index = await d.get_manifest("all/cuda", "multi")
            kids = [await d.manifest_digest("all/cuda", c.digest) for c in children.values()]
            amd_blobs = [await d.blob_exists("arm/cuda", b) for b in children["amd64"].blobs]
            arm_blobs = [await d.blob_exists("arm/cuda", b) for b in children["arm64"].blobs]
            return index, children, got_index, kids, arm_plan, amd_blobs, arm_blobs

    index, children, got_index, kids, arm_plan, amd_blobs, arm_blobs = run(scenario())
    assert got_index.digest == index.digest and got_index.media_type == DOCKER_LIST
    assert kids == [c.digest for c in children.values()]
    assert (
        arm_plan.top.digest == children["arm64"].digest
        and arm_plan.top.media_type == DOCKER_MANIFEST
    )
    assert arm_plan.upstream_digest == index.digest
    assert all(arm_blobs) and not any(amd_blobs)


def test_same_registry_copy_mounts_instead_of_streaming(src):
    async def scenario():
        async with client_for(src.host) as s, client_for(src.host) as d:
            pushed = await push_image(s, "nvidia/cuda", "m1")
            plan = await plan_image(s, parse_reference(pushed.ref))
            return await copy_image(s, plan, d, "mirror/cuda")

    stats = run(scenario())
    assert (stats.blobs_mounted, stats.blobs_copied, stats.bytes_copied) == (3, 0, 0)


def test_corrupted_source_blob_is_caught_and_not_uploaded(src, dst):
    async def push():
        async with client_for(src.host) as s:
            return await push_image(s, "nvidia/cuda", "corrupt", layers=1, layer_size=300_000)

    pushed = run(push())
    layer = pushed.blobs[1]
    data = src.root / "data/docker/registry/v2/blobs/sha256" / layer[7:9] / layer[7:] / "data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))

    async def scenario():
        async with client_for(src.host) as s, client_for(dst.host) as d:
            plan = await plan_image(s, parse_reference(pushed.ref))
            with pytest.raises(DigestMismatch) as err:
                await copy_image(s, plan, d, "base/cuda")
            return (
                err.value,
                await d.blob_exists("base/cuda", layer),
                await d.manifest_digest("base/cuda", pushed.digest),
            )

    err, layer_there, manifest_there = run(scenario())
    assert layer in str(err) and "corrupt" in str(err)
    assert not layer_there and manifest_there is None


def test_registry_failing_every_third_request_still_gives_a_complete_mirror(src, dst, flaky):
    async def push():
        async with client_for(src.host) as s:
            index, _ = await push_index(s, "nvidia/cuda", "flaky", docker=False)
            return index

    index = run(push())
    src_proxy, dst_proxy = flaky(src.url), flaky(dst.url)

    async def scenario():
        fast = {"backoff_base": 0.01, "backoff_cap": 0.05}
        async with (
            client_for(src_proxy.server.host, **fast) as s,
            client_for(dst_proxy.server.host, **fast) as d,
        ):
            plan = await plan_image(
                s, parse_reference(f"{src_proxy.server.host}/nvidia/cuda:flaky")
            )
            stats = await copy_image(s, plan, d, "base/cuda")
            await tag_image(d, "base/cuda", plan.top, ["flaky"])
        async with client_for(dst.host) as direct:
            got = await direct.get_manifest("base/cuda", "flaky")
            blobs = [
                await direct.read_blob("base/cuda", desc) for m in plan.images for desc in m.blobs()
            ]
        return stats, got, blobs, plan

    stats, got, blobs, plan = run(scenario())
    assert src_proxy.failed > 0 and dst_proxy.failed > 0 and stats.retries > 0
    assert (
        got.digest == index.digest and len(blobs) == len(plan.blobs()) * 1 == 6
    )  # read_blob verifies each digest


@pytest.mark.parametrize("chunked", [True, False])
def test_oversized_manifest_is_refused(src, flaky, chunked):
    # The registry itself refuses to store a manifest over 4 MiB, so a fault-injecting peer pads one.
    proxy = flaky(src.url, fail_every=0, pad_manifests=MAX_MANIFEST_BYTES, pad_chunked=chunked)

    async def scenario():
        async with client_for(src.host) as s:
            await push_image(s, "nvidia/cuda", "big", layers=1)
        async with client_for(proxy.server.host) as p:
            with pytest.raises(ManifestTooLarge) as err:
                await p.get_manifest("nvidia/cuda", "big")
            return err.value

    err = run(scenario())
    assert "4 MiB" in str(err) and "nvidia/cuda:big" in str(err) and not is_transient(err)


def test_unknown_tag_is_not_found_and_not_retried(src, flaky):
    proxy = flaky(src.url, fail_every=0)

    async def scenario():
        async with client_for(proxy.server.host) as s:
            with pytest.raises(NotFound) as err:
                await plan_image(s, parse_reference(f"{proxy.server.host}/nvidia/cuda:nope"))
            return err.value

    err = run(scenario())
    assert err.code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN") and "nvidia/cuda:nope" in str(err)
    assert proxy.requests == 1


def test_basic_auth_registry(start, src, flaky):
    private = start(htpasswd=("mirror-bot", "hunter2-Very-Secret"))
    proxy = flaky(private.url, fail_every=0)
    good = RegistryCredentials(
        "mirror-bot", "hunter2-Very-Secret", "DockerRegistryCredentials block 'private'"
    )
    bad = RegistryCredentials(
        "mirror-bot", "wrong-Pass-123", "DockerRegistryCredentials block 'private'"
    )

    async def scenario():
        async with client_for(src.host) as s:
            pushed = await push_image(s, "nvidia/cuda", "b1")
            plan = await plan_image(s, parse_reference(pushed.ref))
            async with client_for(private.host, good) as d:
                stats = await copy_image(s, plan, d, "base/cuda")
                got = await d.manifest_digest("base/cuda", pushed.digest)
            async with client_for(proxy.server.host, bad) as d:
                with pytest.raises(RegistryAuthError) as err:
                    await copy_image(s, plan, d, "other/cuda")
            return pushed, stats, got, err.value

    pushed, stats, got, err = run(scenario())
    assert got == pushed.digest and stats.blobs_copied == 3
    text = str(err)
    assert private.host in text or proxy.server.host in text
    assert "DockerRegistryCredentials block 'private'" in text and "not retried" in text
    assert "wrong-Pass-123" not in text and "hunter2" not in text
    assert (
        proxy.requests <= 2 * 3
    )  # each blob task: one challenge, one refused retry; no backoff loop
    assert not is_transient(err)


def test_bearer_token_registry(token_registry, src):
    reg, tokens = token_registry

    async def scenario():
        async with client_for(src.host) as s:
            pushed = await push_image(s, "nvidia/cuda", "t1")
            plan = await plan_image(s, parse_reference(pushed.ref))
            async with client_for(reg.host, TOKEN_BOT) as d:
                stats = await copy_image(s, plan, d, "base/cuda")
                got = await d.manifest_digest("base/cuda", pushed.digest)
            async with client_for(reg.host) as anonymous:
                with pytest.raises(RegistryAuthError) as anon_err:
                    await anonymous.get_manifest("base/cuda", pushed.digest)
            bad = RegistryCredentials(
                "mirror-bot", "nope-Not-It", "DockerRegistryCredentials block 'tok'"
            )
            async with client_for(reg.host, bad) as wrong:
                with pytest.raises(RegistryAuthError) as bad_err:
                    await wrong.get_manifest("base/cuda", pushed.digest)
            return pushed, stats, got, anon_err.value, bad_err.value

    pushed, stats, got, anon_err, bad_err = run(scenario())
    assert got == pushed.digest and stats.blobs_copied == 3
    granted = [t for t in tokens.issued if t["user"] == "mirror-bot"]
    assert granted and "repository:base/cuda:pull,push" in granted[0]["scopes"]
    assert len(granted) <= 2  # one token serves the whole copy
    assert "anonymous" in str(anon_err) and reg.host in str(anon_err)
    assert "token service" in str(bad_err) and "block 'tok'" in str(bad_err) and tokens.refused >= 1
    assert "nope-Not-It" not in str(bad_err) and "s3cret" not in str(bad_err)


def test_bearer_token_expiring_during_an_upload_retries_that_blob(token_registry, src, flaky):
    """The registry answers 401 to an upload PUT (what an expired token gets in the middle of a
    long upload): the client drops its token, fetches a fresh one and copies that blob again."""
    reg, tokens = token_registry
    proxy = flaky(reg.url, fail_every=0, expire_first_upload=True)
    issued_before = len([t for t in tokens.issued if t["user"] == "mirror-bot"])

    async def scenario():
        fast = {"backoff_base": 0.01, "backoff_cap": 0.05}
        async with client_for(src.host) as s:
            pushed = await push_image(s, "nvidia/cuda", "expiring", layers=2)
            plan = await plan_image(s, parse_reference(pushed.ref))
            async with client_for(proxy.server.host, TOKEN_BOT, **fast) as d:
                stats = await copy_image(s, plan, d, "expiring/cuda")
                await tag_image(d, "expiring/cuda", plan.top, ["expiring"])
            async with client_for(reg.host, TOKEN_BOT) as direct:
                got = await direct.get_manifest("expiring/cuda", "expiring")
                blobs = [await direct.read_blob("expiring/cuda", b) for b in plan.blobs()]
        return pushed, plan, stats, got, blobs

    pushed, plan, stats, got, blobs = run(scenario())
    assert proxy.expired == 1
    assert stats.retries >= 1 and stats.blobs_copied == len(plan.blobs()) == len(blobs)
    assert got.digest == pushed.digest  # read_blob verified every blob's digest
    issued = [t for t in tokens.issued if t["user"] == "mirror-bot"][issued_before:]
    assert len(issued) >= 2  # the first token, and a fresh one after the 401


def test_upload_sent_tokenless_after_a_concurrent_expiry_is_retried_not_refused(token_registry):
    """The race the test above found: one upload's 401 expires the shared token while another
    upload's PUT goes out with none. That 401 is a missing token, not a denial: transient."""
    reg, _ = token_registry
    data = b"layer bytes " * 1000

    async def scenario():
        async with client_for(reg.host, TOKEN_BOT) as d:
            d.want("race/cuda", "pull,push")
            location = await d.start_upload("race/cuda")  # fetches the token
            d.auth.expire_token()  # what a concurrent upload's 401 does

            async def body():
                yield data

            desc = Descriptor("application/octet-stream", sha256_digest(data), len(data))
            with pytest.raises(RegistryUnavailable) as err:
                await d.finish_upload(location, desc, body(), "race/cuda")
            uploaded = await d.upload_bytes("race/cuda", data)  # and the retry goes through
            return err.value, uploaded, await d.blob_exists("race/cuda", desc.digest)

    err, uploaded, present = run(scenario())
    assert is_transient(err) and "expired" in str(err)
    assert present and uploaded.digest == sha256_digest(data)


def test_password_is_a_secretstr_and_never_shown(start, src, caplog):
    """The password is a pydantic SecretStr: no repr, str, log line or exception shows it."""
    from pydantic import SecretStr

    from shipyard.blocks.registry_credentials import credentials_from_docker_block  # noqa: F401 (importable)

    secret = "Zq9-never-Print-Me"
    private = start(htpasswd=("mirror-bot", "right-Pass-42"))
    creds = RegistryCredentials("mirror-bot", secret, "DockerRegistryCredentials block 'p'")
    again = RegistryCredentials("mirror-bot", SecretStr(secret))
    assert isinstance(creds.password, SecretStr) and creds.password.get_secret_value() == secret
    assert again.password.get_secret_value() == secret

    async def scenario():
        async with client_for(src.host) as s:
            pushed = await push_image(s, "nvidia/cuda", "s1")
            plan = await plan_image(s, parse_reference(pushed.ref))
            async with client_for(private.host, creds) as d:
                shown = [repr(d.auth.credentials), str(d.auth.credentials), repr(d.__dict__)]
                with pytest.raises(RegistryAuthError) as err:
                    await copy_image(s, plan, d, "base/cuda")
            return shown, err.value

    with caplog.at_level("DEBUG"):
        shown, err = run(scenario())
    texts = [*shown, str(err), repr(err), repr(creds), str(creds.password), caplog.text]
    assert all(secret not in t for t in texts)
    assert "block 'p'" in str(err)
