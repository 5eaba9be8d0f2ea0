"""Automations on Shipyard's events, e.g. tell people when a release rolled back.

`rolled_back_automation(actions)` is the automation the README shows: it fires on each
`shipyard.release.rolled-back` of a service (`shipyard.cloud-run.service.*`, or one service),
and runs the given actions — a `SendNotification` with a Slack/e-mail block in production.
The event's payload carries git_tag, region, revision and url for the message template.

`awaiting_approval_automation(actions)` fires when a release flow run enters Suspended or Paused
(Prefect's own `prefect.flow-run.Suspended` / `.Paused` events, of the flow `release`): a release
waits at an approval gate (flows/rollout/gate.py) and someone must answer its Resume form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from prefect.events.actions import ActionTypes, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

__all__ = [
    "APPROVAL_BODY",
    "NOTIFY_BODY",
    "awaiting_approval_automation",
    "create_awaiting_approval_automation",
    "create_rolled_back_automation",
    "rolled_back_automation",
]

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


# The notification's objects: Prefect renders `flow_run` (the release run) and `ui_url`.
APPROVAL_BODY = (
    "Release run {{ flow_run.name }} awaits approval: answer its Resume form at "
    "{{ flow_run|ui_url }} (or `shipyard promote` / `shipyard abort`)."
)


def awaiting_approval_automation(
    actions: Sequence[ActionTypes], flow_name: str = "release", name: str | None = None
) -> AutomationCore:
    return AutomationCore(
        name=name or f"shipyard: {flow_name} awaits approval",
        description="Runs when a Shipyard release waits at an approval gate (its run Suspended "
        "or Paused until a person answers the Resume form).",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Suspended", "prefect.flow-run.Paused"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": flow_name},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=list(actions),
    )


def create_awaiting_approval_automation(
    notification_block_id: UUID, flow_name: str = "release", **kwargs: Any
) -> UUID:
    """Create the notify-on-approval-gate automation with a notification block."""
    from prefect.client.orchestration import get_client

    action = SendNotification(
        block_document_id=notification_block_id,
        subject="Shipyard: a release awaits approval",
        body=APPROVAL_BODY,
    )
    with get_client(sync_client=True) as client:
        return client.create_automation(awaiting_approval_automation([action], flow_name, **kwargs))
