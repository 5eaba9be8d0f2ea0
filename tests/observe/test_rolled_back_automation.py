"""The README's automation on `shipyard.release.rolled-back`, fired on the test server: the
automation is created, the event emitted, and its action (here: pause a deployment, an action
OSS Prefect performs and the API shows) happens."""

from __future__ import annotations

import time
import uuid

from prefect.client.orchestration import get_client
from prefect.events.actions import PauseDeployment

from shipyard.deployments.automations import rolled_back_automation


def _post_event(client, name: str, service: str) -> None:
    client.request(
        "POST",
        "/events",
        json=[
            {
                "id": str(uuid.uuid4()),
                "occurred": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "event": name,
                "resource": {
                    "prefect.resource.id": f"shipyard.cloud-run.service.{service}",
                    "prefect.resource.name": service,
                },
                "payload": {"git_tag": "v5.0.0", "revision": "r4", "region": "europe-west1"},
            }
        ],
    )


def test_rolled_back_automation_fires_its_action(prefect_server):
    service = f"auto-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(f"notify-{service}")
        deployment_id = client.create_deployment(flow_id=flow_id, name=f"on-rollback-{service}")
        automation_id = client.create_automation(
            rolled_back_automation([PauseDeployment(deployment_id=deployment_id)], service)
        )
        try:
            assert client.read_deployment(deployment_id).paused is False
            _post_event(client, "shipyard.release.released", service)  # not a rollback
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                # Sent again until it acts: the triggers service loads a new automation
                # asynchronously, an event before that is not matched.
                _post_event(client, "shipyard.release.rolled-back", service)
                if client.read_deployment(deployment_id).paused:
                    break
                time.sleep(0.5)
            assert client.read_deployment(deployment_id).paused is True
        finally:
            client.delete_automation(automation_id)
