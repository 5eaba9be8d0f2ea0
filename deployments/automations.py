"""Automations on Shipyard's events, e.g. tell people when a release rolled back.

`rolled_back_automation(actions)` is the automation the README shows: it fires on each
`shipyard.release.rolled-back` of a service (`shipyard.cloud-run.service.*`, or one service),
and runs the given actions — a `SendNotification` with a Slack/e-mail block in production.
The event's payload carries git_tag, region, revision and url for the message template.

`auto_promotion_automation(upstream, downstream, deployment_id)` fires on each
`shipyard.release.passed` of the upstream target block (flows/promotion/chain.py: a release that
ended `released` there) and runs the `promote-release` deployment with the downstream target and
the event's git tag: one per downstream target with `auto_promote=True`;
`create_auto_promotion_automation(targets)` creates (or replaces) them, called by
`shipyard promote-release --auto-setup`.

`awaiting_approval_automation(actions)` fires when a release flow run enters Suspended or Paused
(Prefect's own `prefect.flow-run.Suspended` / `.Paused` events, of the flow `release`): a release
waits at an approval gate (flows/rollout/gate.py) and someone must answer its Resume form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from prefect.events.actions import ActionTypes, RunDeployment, SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

__all__ = [
    "APPROVAL_BODY",
    "NOTIFY_BODY",
    "PROMOTE_DEPLOYMENT",
    "auto_promotion_automation",
    "awaiting_approval_automation",
    "create_auto_promotion_automation",
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


# prefect.yaml's promotion deployment (flow `promote-release`, deployment `promote-release`).
PROMOTE_DEPLOYMENT = "promote-release/promote-release"


def auto_promotion_name(downstream: str) -> str:
    return f"shipyard: auto-promote to {downstream}"


def auto_promotion_automation(
    upstream: str, downstream: str, deployment_id: UUID, name: str | None = None
) -> AutomationCore:
    """On each `shipyard.release.passed` of the `upstream` target block, run the promotion
    deployment for `downstream` with the event's git tag (the promotion checks again that the
    tag passed upstream: the event only starts it)."""
    from shipyard.flows.promotion.chain import PASSED_EVENT, TARGET_RESOURCE

    return AutomationCore(
        name=name or auto_promotion_name(downstream),
        description=f"Promotes to {downstream} each release that passes in {upstream} "
        f"(ReleaseTarget {downstream!r} has auto_promote on).",
        trigger=EventTrigger(
            expect={PASSED_EVENT},
            match={"prefect.resource.id": f"{TARGET_RESOURCE}{upstream}"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=deployment_id,
                job_variables=None,
                parameters={
                    "target": downstream,
                    "git_tag": "{{ event.payload.git_tag }}",
                    "comment": f"passed {upstream} (release run {{{{ event.payload.flow_run_id }}}})",
                    "by": "automation (auto_promote)",
                },
            )
        ],
    )


def create_auto_promotion_automation(
    targets: Sequence[str], deployment: str = PROMOTE_DEPLOYMENT
) -> dict[str, UUID]:
    """For each target block among `targets` with auto_promote on, the automation that promotes
    to it what passes in its promotes_from (an existing one of the same name is replaced, so a
    second call changes nothing); returns target -> automation id. Refuses, naming the block and
    the fix, a target that does not exist, and a missing promotion deployment."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from shipyard.flows.promotion.passed import load_target

    pairs: list[tuple[str, str]] = []
    for name in targets:
        block = load_target(name)
        if block.auto_promote and block.promotes_from:
            pairs.append((block.promotes_from, name))
    created: dict[str, UUID] = {}
    with get_client(sync_client=True) as client:
        try:
            deployment_id = client.read_deployment_by_name(deployment).id
        except ObjectNotFound:
            raise ValueError(
                f"deployment {deployment!r} does not exist: deploy prefect.yaml's promote-release "
                "(`prefect deploy --name promote-release`) before setting up auto promotion"
            ) from None
        for upstream, downstream in pairs:
            automation = auto_promotion_automation(upstream, downstream, deployment_id)
            for old in client.read_automations_by_name(automation.name):
                client.delete_automation(old.id)
            created[downstream] = client.create_automation(automation)
    return created
