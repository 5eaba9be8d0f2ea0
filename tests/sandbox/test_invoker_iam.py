"""Invoker IAM as Google enforces it: a private service refuses a request without a valid ID
token with Google's 403 page; the token comes from the `GoogleCloud` block (in the sandbox:
minted by the emulator, which accepts only its own)."""

from __future__ import annotations

import httpx
from google.cloud import run_v2
from run_testkit import FAST, parent, target, template


def test_private_service_needs_an_id_token_public_one_does_not(sandbox_admin, cloud):
    sandbox_admin.reset(scenario_data={})
    services = cloud.services_client()
    private = services.create_service(
        parent=parent(cloud), service=run_v2.Service(template=template()), service_id="private"
    ).result(polling=FAST)
    public = services.create_service(
        parent=parent(cloud),
        service=run_v2.Service(template=template(), invoker_iam_disabled=True),
        service_id="public",
    ).result(polling=FAST)
    with httpx.Client(timeout=20) as http:
        refused = http.get(private.uri + "/health")
        assert refused.status_code == 403
        assert "<h1>Error: Forbidden</h1>" in refused.text
        assert "Your client does not have permission to get URL <code>/health</code>" in (
            refused.text
        )
        token = cloud.id_token(private.uri)
        ok = http.get(private.uri + "/health", headers={"authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        bad = http.get(private.uri + "/health", headers={"authorization": f"Bearer {forged}"})
        assert bad.status_code == 403
        other = cloud.id_token(public.uri)  # a token for another service's URL
        wrong = http.get(private.uri + "/health", headers={"authorization": f"Bearer {other}"})
        assert wrong.status_code == 403
        assert http.get(public.uri + "/health").status_code == 200


def test_the_audience_is_matched_exactly_not_as_a_substring(sandbox_admin, cloud):
    """6. A token for `my-pages` names a URL that contains `pages`' host: Google matches the
    audience against the service's URLs, so it does not open `pages`. The service's own URL
    (with or without a trailing slash) and its tags' URLs do."""
    sandbox_admin.reset(scenario_data={})
    services = cloud.services_client()

    def private(service_id: str) -> run_v2.Service:
        return services.create_service(
            parent=parent(cloud), service=run_v2.Service(template=template()), service_id=service_id
        ).result(polling=FAST)

    pages, other = private("pages"), private("my-pages")
    assert other.uri.endswith("my-" + pages.uri.rsplit("/", 1)[-1])  # the substring
    pages.traffic = [target(pages.latest_ready_revision.rsplit("/", 1)[-1], 100, "canary")]
    pages = services.update_service(service=pages).result(polling=FAST)
    tag_uri = pages.traffic_statuses[0].uri

    def status(url: str, audience: str) -> int:
        bearer = {"authorization": f"Bearer {cloud.id_token(audience)}"}
        return http.get(url + "/health", headers=bearer).status_code

    with httpx.Client(timeout=20) as http:
        assert status(pages.uri, other.uri) == 403
        assert status(pages.uri, pages.uri + "/extra") == 403
        assert status(pages.uri, pages.uri) == 200
        assert status(pages.uri, pages.uri + "/") == 200
        assert status(tag_uri, tag_uri) == 200
        assert status(other.uri, other.uri) == 200
