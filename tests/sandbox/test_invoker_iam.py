"""Invoker IAM as Google enforces it: a private service refuses a request without a valid ID
token with Google's 403 page; the token comes from the `GoogleCloud` block (in the sandbox:
minted by the emulator, which accepts only its own)."""

from __future__ import annotations

import httpx
from google.cloud import run_v2
from run_testkit import FAST, parent, template


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
