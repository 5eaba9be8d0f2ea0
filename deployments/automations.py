"""Automations on Shipyard's events, e.g. tell people when a release rolled back.

`rolled_back_automation(actions)` is the automation the README shows: it fires on each
`shipyard.release.rolled-back` of a service (`shipyard.cloud-run.service.*`, or one service),
and runs the given actions — a `SendNotification` with a Slack/e-mail block in production.
The event's payload carries git_tag, region, revision and url for the message template.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from prefect.events.actions import ActionTypes, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

__all__ = ["NOTIFY_BODY", "create_rolled_back_automation", "rolled_back_automation"]

NOTIFY_BODY = (
    "Release {{ event.payload.git_tag }} of {{ event.resource['prefect.resource.name'] }} "
    "rolled back; 100% stays on {{ event.payload.revision }} in {{ event.payload.region }}."
)


def rolled_back_automation(
    actions: Sequence[ActionTypes], service: str = "*", name: str | None = None
) -> AutomationCore:
    return AutomationCore(
        name=name or f"shipyard: release rolled back ({service})",
        description="Runs when a Shipyard release ends rolled back (canary or GPU deploy failed).",
        trigger=EventTrigger(
            expect={"shipyard.release.rolled-back"},
            match={"prefect.resource.id": f"shipyard.cloud-run.service.{service}"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=list(actions),
    )


def create_rolled_back_automation(
    notification_block_id: UUID, service: str = "*", **kwargs: Any
) -> UUID:
    """Create the notify-on-rollback automation with a notification block (Slack, e-mail...)."""
    from prefect.client.orchestration import get_client

    action = SendNotification(
        block_document_id=notification_block_id,
        subject="Shipyard: release rolled back",
        body=NOTIFY_BODY,
    )
    with get_client(sync_client=True) as client:
        return client.create_automation(rolled_back_automation([action], service, **kwargs))
