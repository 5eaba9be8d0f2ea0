"""Registries as they really behave: rate limits with Retry-After, bodies cut short, buildx
attestation manifests, refused mounts, multi-scope challenges, abandoned upload sessions and
permanent refusals. Real distribution registries, with the faults injected by the proxy and
token server of mirror_servers.py (each fault's source is named there)."""

from __future__ import annotations

import json

import pytest
from mirror_images import client_for, push_image, push_index, run, uploads_left

from shipyard.tasks.errors import is_transient
from shipyard.tasks.registry import (
    OCI_MANIFEST,
    Manifest,
    RegistryCredentials,
    RegistryRequestError,
    RegistryUnavailable,
    copy_image,
    parse_reference,
    plan_image,
    sha256_digest,
)

FAST = {"backoff_base": 0.01, "backoff_cap": 0.05}


# ---------------------------------------------------------------- Retry-After, retry budget


def test_retry_after_parses_seconds_and_http_dates():
    from datetime import UTC, datetime

    from shipyard.tasks.registry import parse_retry_after

    now = datetime(2026, 11, 29, 1, 0, 0, tzinfo=UTC)
    assert parse_retry_after("10") == 10.0
    assert parse_retry_after("Sun, 29 Nov 2026 01:00:07 GMT", now) == 7.0
    assert parse_retry_after("Sun, 29 Nov 2026 00:59:00 GMT", now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [(429, "1"), (503, "date:1")],
    ids=["429-delta-seconds", "503-http-date"],
)
def test_rate_limited_source_is_waited_out_as_the_registry_asks(
    src, dst, flaky, status, retry_after
):
    """Every 3rd request to the source (manifests: read-source; configs: read-config; blobs) is
    refused with a Retry-After; the client waits that long before asking again (no request for
    the same path comes early), then copies the image intact."""
    proxy = flaky(
        src.url, fail_every=0, throttle_every=3, throttle_status=status, retry_after=retry_after
    )

    async def scenario():
        async with client_for(src.host) as s:
            index, _ = await push_index(s, "nvidia/cuda", "ra", docker=False)
        async with client_for(proxy.server.host, **FAST) as p, client_for(dst.host) as d:
            plan = await plan_image(p, parse_reference(f"{proxy.server.host}/nvidia/cuda:ra"))
            configs = [await p.read_blob("nvidia/cuda", m.config()) for m in plan.images]
            stats = await copy_image(p, plan, d, "base/cuda")
            got = await d.get_manifest("base/cuda", index.digest)
        return index, plan, configs, stats, got

    index, _plan, configs, stats, got = run(scenario())
    assert proxy.throttled == 3 and proxy.early == []
    assert got.digest == index.digest and len(configs) == 2 and stats.retries >= 3


def test_retry_after_beyond_the_budget_gives_up_at_once_naming_the_setting(src, flaky):
    proxy = flaky(src.url, fail_every=0, throttle_every=1, throttle_max=1, retry_after="30")

    async def scenario():
        async with client_for(proxy.server.host, retry_budget=2, **FAST) as p:
            with pytest.raises(RegistryUnavailable) as err:
                await p.get_manifest("nvidia/cuda", "anything")
        return err.value

    err = run(scenario())
    text = str(err)
    assert proxy.requests == 1 and proxy.early == []  # no retry that the registry would refuse
    assert "HTTP 429 TOOMANYREQUESTS" in text and "Retry-After 30s" in text
    assert "retry budget is 2s" in text and "--retry-budget" in text and is_transient(err)


@pytest.fixture
def blob_refused_10s(src, flaky):
    """A proxy in front of `src` that answers the first GET of a source blob `429` with
    `Retry-After: 10`, and everything else as `src` does."""
    blobs = "GET /v2/nvidia/cuda/blobs/sha256:"
    return flaky(
        src.url, fail_every=0, throttle_every=1, throttle_max=1, retry_after="10",
        throttle_only=blobs,
    )  # fmt: skip


@pytest.mark.slow
def test_a_retry_after_of_ten_seconds_is_waited_out_and_the_copy_completes(
    src, dst, blob_refused_10s
):
    """skopeo survives `429` with `Retry-After: 10` (containers/common#2494 is what happens
    without it); so does the mirror. The first GET of a source blob is refused for 10 s; the
    registry's own request log shows the next GET of that blob no earlier than that, and the
    image arrives intact with the default budget."""
    proxy = blob_refused_10s

    async def scenario():
        async with client_for(src.host) as s:
            pushed = await push_image(s, "nvidia/cuda", "ten")
        async with client_for(proxy.server.host) as p, client_for(dst.host) as d:
            plan = await plan_image(p, parse_reference(f"{proxy.server.host}/nvidia/cuda:ten"))
            stats = await copy_image(p, plan, d, "base/cuda")
            got = await d.get_manifest("base/cuda", pushed.digest)
        return pushed, stats, got

    pushed, stats, got = run(scenario())
    assert got.digest == pushed.digest and stats.retries >= 1
    assert proxy.throttled == 1 and proxy.early == []
    refused = next((t, key) for t, key, status in proxy.seen if status == 429)
    again = [t for t, key, status in proxy.seen if key == refused[1] and t > refused[0]]
    assert again, "the refused blob was never asked for again"
    assert again[0] - refused[0] >= 10.0  # measured where the registry received the requests


def test_a_budget_shorter_than_retry_after_fails_at_once_naming_the_setting(
    src, dst, blob_refused_10s
):
    """The same 10 s Retry-After with a 5 s retry budget: no retry the registry would refuse,
    no 10 s wait, a refusal that names the budget and the setting to raise."""
    proxy = blob_refused_10s

    async def scenario():
        async with client_for(src.host) as s:
            await push_image(s, "nvidia/cuda", "short")
        async with (
            client_for(proxy.server.host, retry_budget=5) as p,
            client_for(dst.host, retry_budget=5) as d,
        ):
            plan = await plan_image(p, parse_reference(f"{proxy.server.host}/nvidia/cuda:short"))
            with pytest.raises(RegistryUnavailable) as err:
                await copy_image(p, plan, d, "base/cuda")
        return err.value

    err = run(scenario())
    text = str(err)
    assert "HTTP 429 TOOMANYREQUESTS" in text and "Retry-After 10s" in text
    assert "retry budget is 5s" in text and "--retry-budget" in text
    assert "retry_budget_seconds" in text
    refused = [key for _, key, status in proxy.seen if status == 429]
    assert len(refused) == 1 and proxy.early == []
    assert [k for _, k, _ in proxy.seen].count(refused[0]) == 1  # never asked again


def test_manifest_and_config_bodies_cut_short_are_read_again(src, dst, flaky):
    """A connection reset in the middle of a manifest or config body (read-source,
    read-config) is a transient failure like any other: read again, not raised."""
    proxy = flaky(src.url, fail_every=0, cut_bodies=True)

    async def scenario():
        async with client_for(src.host) as s:
            pushed = await push_image(s, "nvidia/cuda", "cut")
        async with client_for(proxy.server.host, **FAST) as p:
            plan = await plan_image(p, parse_reference(f"{proxy.server.host}/nvidia/cuda:cut"))
            config = json.loads(await p.read_blob("nvidia/cuda", plan.top.config()))
        return pushed, plan, config

    pushed, plan, config = run(scenario())
    assert plan.top.digest == pushed.digest and config["architecture"] == "amd64"
    assert any("/manifests/" in c for c in proxy.cut) and any("/blobs/" in c for c in proxy.cut)


# ---------------------------------------------------------------- buildx attestations


def test_attestations_ride_along_with_all_platforms_and_are_dropped_with_a_choice(src, dst):
    async def scenario():
        async with client_for(src.host) as s:
            index, children = await push_index(s, "app/web", "att", docker=False, attestations=True)
            ref = parse_reference(f"{src.host}/app/web:att")
            whole = await plan_image(s, ref)
            both = await plan_image(s, ref, ["linux/amd64", "linux/arm64"])
            one = await plan_image(s, ref, ["linux/arm64"])
            async with client_for(dst.host) as d:
                await copy_image(s, whole, d, "all/web")
                await copy_image(s, both, d, "two/web")
                kept = {
                    n: await d.manifest_digest("all/web", c.digest) for n, c in children.items()
                }
                in_two = {
                    n: await d.manifest_digest("two/web", c.digest) for n, c in children.items()
                }
                att_blobs = [
                    await d.blob_exists("two/web", b)
                    for n, c in children.items()
                    if n.startswith("att-")
                    for b in c.blobs
                ]
        return index, children, whole, both, one, kept, in_two, att_blobs

    index, children, whole, both, one, kept, in_two, att_blobs = run(scenario())
    # All platforms: the index as is (digest preserved), its attestations copied with it.
    assert whole.top.digest == index.digest and all(kept[n] for n in children)
    assert whole.platforms == ["linux/amd64", "linux/arm64/v8"]  # never unknown/unknown
    assert len(whole.attestations) == 2
    # Two platforms chosen: a new index without attestation entries, none pushed, no blob of theirs.
    entries = json.loads(both.top.raw)["manifests"]
    assert [e["platform"]["architecture"] for e in entries] == ["amd64", "arm64"]
    assert not any("annotations" in e for e in entries) and both.attestations == []
    assert in_two["amd64"] and in_two["arm64"]
    assert not in_two["att-amd64"] and not in_two["att-arm64"] and not any(att_blobs)
    # One platform: that image alone.
    assert one.top.digest == children["arm64"].digest and one.platforms == ["linux/arm64/v8"]


# ---------------------------------------------------------------- mounts and scopes


def test_refused_mount_falls_back_to_an_upload_and_scopes_are_split(token_registry):
    """push-bot may push to mounted/* and read nothing else. A mount from upstream/cuda needs
    `repository:upstream/cuda:pull` too: distribution answers 401 with a challenge naming both
    scopes in one space-separated `scope` (registry/auth/token: accessSet.scopeParam joined by
    spaces). The token is requested with each as its own parameter, the mount is still refused,
    and the blobs are streamed instead."""
    reg, tokens = token_registry
    owner = RegistryCredentials("mirror-bot", "s3cret-Token-pw")
    pusher = RegistryCredentials("push-bot", "push-Only-pw", "DockerRegistryCredentials 'push'")
    before = len(tokens.issued)

    async def scenario():
        async with client_for(reg.host, owner) as s:
            s.want("upstream/cuda", "pull,push")
            pushed = await push_image(s, "upstream/cuda", "m1")
            plan = await plan_image(s, parse_reference(f"{reg.host}/upstream/cuda:m1"))
            async with client_for(reg.host, pusher) as d:
                stats = await copy_image(s, plan, d, "mounted/cuda")
                got = await d.get_manifest("mounted/cuda", pushed.digest)
        return pushed, stats, got

    pushed, stats, got = run(scenario())
    assert got.digest == pushed.digest
    assert stats.blobs_mounted == 0 and stats.blobs_copied == 3
    asked = [t["scopes"] for t in tokens.issued[before:] if t["user"] == "push-bot"]
    assert all(" " not in scope for scopes in asked for scope in scopes)
    assert any("repository:upstream/cuda:pull" in scopes for scopes in asked)


def test_a_token_service_refusing_one_scope_gets_the_destinations_scopes_alone(
    strict_token_registry, src
):
    """A token service that refuses the whole request when one scope is denied (not the
    subset the spec asks for: mirror_servers.TokenServer.strict). push-bot may push mounted/*
    and read nothing else: the combined request (with the mount source's pull) is refused, the
    token is asked again for the destination's scopes alone, and the blobs are uploaded. From
    another registry, the destination is never asked for the source's scope."""
    reg, tokens = strict_token_registry
    owner = RegistryCredentials("mirror-bot", "s3cret-Token-pw")
    pusher = RegistryCredentials("push-bot", "push-Only-pw", "DockerRegistryCredentials 'push'")

    async def scenario():
        async with client_for(reg.host, owner) as s:
            s.want("upstream/cuda", "pull,push")
            pushed = await push_image(s, "upstream/cuda", "strict")
            plan = await plan_image(s, parse_reference(f"{reg.host}/upstream/cuda:strict"))
            async with client_for(reg.host, pusher) as d:
                same = await copy_image(s, plan, d, "mounted/cuda")
                got = await d.get_manifest("mounted/cuda", pushed.digest)
        async with client_for(src.host) as other:
            far = await push_image(other, "nvidia/cuda", "strict", seed=7)
            far_plan = await plan_image(other, parse_reference(far.ref))
            async with client_for(reg.host, pusher) as d:
                across = await copy_image(other, far_plan, d, "mounted/far")
                far_got = await d.get_manifest("mounted/far", far.digest)
        return pushed, same, got, far, across, far_got

    pushed, same, got, far, across, far_got = run(scenario())
    assert got.digest == pushed.digest and same.blobs_copied == 3 and same.blobs_mounted == 0
    assert far_got.digest == far.digest and across.blobs_copied == 3
    refused = [d["scopes"] for d in tokens.denied if d["user"] == "push-bot"]
    assert refused and all("repository:upstream/cuda:pull" in scopes for scopes in refused)
    granted = [t["scopes"] for t in tokens.issued if t["user"] == "push-bot"]
    assert granted and all(s.startswith("repository:mounted/") for g in granted for s in g)
    assert len(refused) == 1  # refused once: the client asks for its own scopes from then on


def test_mount_denied_with_403_falls_back_to_an_upload(src, flaky):
    proxy = flaky(src.url, fail_every=0, deny_mounts=True)

    async def scenario():
        async with client_for(proxy.server.host) as c:
            pushed = await push_image(c, "nvidia/cuda", "d1")
            plan = await plan_image(c, parse_reference(f"{proxy.server.host}/nvidia/cuda:d1"))
            stats = await copy_image(c, plan, c, "base/cuda")
            got = await c.manifest_digest("base/cuda", pushed.digest)
        return pushed, stats, got

    pushed, stats, got = run(scenario())
    assert got == pushed.digest and stats.blobs_copied == 3 and stats.blobs_mounted == 0
    assert proxy.mounts_denied >= 1


# ---------------------------------------------------------------- upload sessions, refusals


def test_a_retried_upload_deletes_the_session_it_abandons(src, dst, flaky):
    proxy = flaky(dst.url, fail_every=0, fail_upload_puts=2)

    async def scenario():
        async with client_for(src.host) as s, client_for(proxy.server.host, **FAST) as d:
            pushed = await push_image(s, "nvidia/cuda", "u1")
            plan = await plan_image(s, parse_reference(pushed.ref))
            stats = await copy_image(s, plan, d, "base/cuda")
            got = await d.manifest_digest("base/cuda", pushed.digest)
        return pushed, stats, got

    pushed, stats, got = run(scenario())
    assert got == pushed.digest and stats.retries >= 2 and proxy.failed == 2
    assert uploads_left(dst, "base/cuda") == []  # the two abandoned sessions were deleted


def test_a_refused_blob_is_not_retried_and_its_cancelled_siblings_leave_no_session(src, dst, flaky):
    """One blob's upload is refused for good (the registry's own 400 DIGEST_INVALID); the
    copies running beside it are cancelled mid-upload; every session they opened is deleted."""

    async def scenario():
        async with client_for(src.host) as s:
            pushed = await push_image(s, "nvidia/cuda", "r1", layers=3)
            plan = await plan_image(s, parse_reference(pushed.ref))
            refused = plan.blobs()[1].digest
            proxy = flaky(dst.url, fail_every=0, wrong_digest_for=refused, hold_uploads=2.0)
            async with client_for(proxy.server.host, **FAST) as d:
                with pytest.raises(RegistryRequestError) as err:
                    await copy_image(s, plan, d, "base/cuda")
        return refused, proxy, err.value

    refused, proxy, err = run(scenario())
    refused_puts = [p for p in proxy.puts if refused[7:] in p]
    assert len(refused_puts) == 1  # not retried
    assert len(proxy.puts) >= 2  # siblings were mid-upload when the refusal came
    sessions = {p.split("?")[0].rsplit("/", 1)[1] for p in proxy.puts}
    deleted = {line.rsplit("/", 1)[1] for line in proxy.log if line.startswith("DELETE")}
    assert sessions <= deleted  # a DELETE for every session, the refused one included
    # distribution 2.8 answers that last DELETE 404 once a refused PUT has written its bytes
    # (the session then waits for the registry's upload purge); every sibling's is gone.
    refused_session = refused_puts[0].split("?")[0].rsplit("/", 1)[1]
    assert set(uploads_left(dst, "base/cuda")) <= {refused_session}
    assert err.code == "DIGEST_INVALID" and "refused" in str(err) and "unavailable" not in str(err)
    assert not is_transient(err)


def test_manifest_blob_unknown_as_500_is_a_refusal_not_unavailability(dst, flaky):
    proxy = flaky(dst.url, fail_every=0, rewrite_status={"MANIFEST_BLOB_UNKNOWN": 500})
    missing = "sha256:" + "ab" * 32
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": missing,
            "size": 2,
        },
        "layers": [],
    }
    raw = json.dumps(body).encode()
    manifest = Manifest(OCI_MANIFEST, raw, sha256_digest(raw))

    async def scenario():
        async with client_for(proxy.server.host, **FAST) as d:
            with pytest.raises(RegistryRequestError) as err:
                await d.put_manifest("base/cuda", "v1", manifest)
        return err.value

    err = run(scenario())
    assert err.code == "MANIFEST_BLOB_UNKNOWN" and "HTTP 500" in str(err)
    assert "refused" in str(err) and "unavailable" not in str(err) and not is_transient(err)
    assert sum(line.startswith("PUT") for line in proxy.log) == 1
