"""Where the status is seen: the `status-<scope>` markdown artifact, and the "Serving now"
section of the Prefect deployments' descriptions (the first thing a person sees on a deployment's
page: Prefect renders the description as Markdown above the runs).

A deployment's description is the static text of prefect.yaml, then a rule, a `## Serving now`
heading and one `### <scope>` section per service (per environment: ReleaseTarget.scope), in
name order. Publishing replaces only its own section and keeps the static text and the other
services' sections. Deploying again (`prefect deploy`, `shipyard serve`) writes the static text
alone: the sections come back with the next action that publishes.

Two services published at the same instant may race on one description (Prefect has no
compare-and-set on deployments): the section lost is restored by that service's next publish.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from shipyard.flows.observe.status import RegionStatus, RevisionRow, ServiceStatus
from shipyard.tasks.reports import artifact_key, markdown_table, publish_markdown

# The flows whose deployments' pages show what serves (`rollback`, `promote`, `abort` where
# they are deployed).
DEPLOYED_FLOWS = ["release", "rollback", "promote", "abort"]
# deployments/fleet.py's release_deployment_name: release-<target> (tests/observe/test_status.py
# checks the two agree).
FLEET_RELEASE_PREFIX = "release-"
SECTION_HEADING = "## Serving now"
_RULE = f"\n\n---\n\n{SECTION_HEADING}\n"
_SERVICE = re.compile(r"^### (\S+)[ \t]*$", re.MULTILINE)

COLUMNS = [
    "revision",
    "traffic",
    "tags",
    "git tag",
    "image",
    "GPU/CPU",
    "Ready",
    "canary passed",
    "last good",
]


def status_key(scope: str) -> str:
    """The status artifact's key of a ReleaseTarget.scope (the service without an environment)."""
    return artifact_key("status", scope)


def _time(iso: str | None) -> str:
    if not iso:
        return ""
    return iso.replace("T", " ")[:16] + " UTC"


def _image(row: RevisionRow) -> str:
    """The image, short: its last path element with the digest's first 12 hex digits, or the
    tag flagged as not pinned."""
    name = row.image.rsplit("/", 1)[-1]
    if row.pinned and row.digest:
        return f"{name.split('@', 1)[0]}@{row.digest[:19]}…"
    return f"{name} (tag, not pinned)" if name else "-"


def _ready(row: RevisionRow) -> str:
    if row.ready == "succeeded":
        return "Ready"
    because = f": {row.not_ready_because}" if row.not_ready_because else ""
    return f"NOT Ready ({row.ready}{because})"


def _canary(row: RevisionRow) -> str:
    if not row.canary_passed_at:
        return ""
    when = _time(row.canary_passed_at)
    return when if row.canary_passed_source == "verdict" else f"by {when}"


def _last_good(row: RevisionRow) -> str:
    if row.last_good:
        return f"yes ({row.good_because})" if row.good_because else "yes"
    return "" if row.good_because else "untested"


def table_rows(region: RegionStatus) -> list[dict[str, Any]]:
    """The region's rows as the table shows them (markdown and the terminal)."""
    return [
        {
            "revision": row.revision,
            "traffic": f"{row.percent}%",
            "tags": ", ".join(row.tags),
            "git tag": row.git_tag or "",
            "image": _image(row),
            "GPU/CPU": f"GPU {row.accelerator or ''}".strip() if row.kind == "GPU" else "CPU",
            "Ready": _ready(row),
            "canary passed": _canary(row),
            "last good": _last_good(row),
        }
        for row in region.revisions
    ]


def _cells(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: str(v).replace("|", "\\|") for k, v in row.items()} for row in rows]


def section_markdown(status: ServiceStatus, heading: str = "###") -> str:
    """The service's status as Markdown: the headline, then a table per region."""
    lines = [f"{heading} {status.scope}", "", f"**{status.headline()}**", ""]
    for region in status.regions:
        where = f"{region.region}" + (f" ({region.url})" if region.url else "")
        lines.append(f"{heading}# {where}")
        lines.append("")
        if region.error:
            lines += [f"not read: {region.error}", ""]
            continue
        lines += [markdown_table(_cells(table_rows(region)), COLUMNS), ""]
    if status.rollout is not None:
        ro = status.rollout
        lines += [
            f"Rollout of {ro.git_tag} in {ro.region}: {ro.new} at {ro.percent}% against "
            f"{ro.stable}, step {ro.step}" + (f" of {ro.steps}" if ro.steps else "") + f", "
            f"{ro.state}" + (f" (flow run {ro.flow_run_id})" if ro.flow_run_id else ""),
            "",
        ]
    if status.absent:
        lines += [f"Not deployed in: {', '.join(status.absent)}", ""]
    lines.append(
        "_Canary passed: the canary verdict's time; `by` a time: the end of the release that "
        "cut over to it (the ledger). Image: as Cloud Run reports it._"
    )
    return "\n".join(lines).rstrip() + "\n"


def with_section(description: str | None, service: str, section: str) -> str:
    """`description` with `service`'s "Serving now" section replaced by `section` (added when
    absent); the static text and the other services' sections kept."""
    text = description or ""
    static, found, rest = text.partition(_RULE)
    if not found:  # no sections yet: the whole text is static
        static, rest = text, ""
    sections: dict[str, str] = {}
    heads = list(_SERVICE.finditer(rest))
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(rest)
        sections[head.group(1)] = rest[head.start() : end].strip()
    sections[service] = section.strip()
    body = "\n\n".join(sections[name] for name in sorted(sections))
    return static.rstrip() + _RULE + "\n" + body + "\n"


def section_of(description: str | None, service: str) -> str | None:
    """The service's section in a description (None: none)."""
    _, found, rest = (description or "").partition(_RULE)
    if not found:
        return None
    heads = list(_SERVICE.finditer(rest))
    for i, head in enumerate(heads):
        if head.group(1) == service:
            end = heads[i + 1].start() if i + 1 < len(heads) else len(rest)
            return rest[head.start() : end].strip()
    return None


def shows(deployment: Any, status: ServiceStatus) -> bool:
    """Whether a deployment's page shows this service: a fleet's `release-<target>` deployment
    (named so by deployments/fleet.py, its `target` parameter that block) shows its own target's
    service only. Every release of a fleet of N targets would otherwise rewrite N descriptions,
    each holding N sections: a cost per release that grows with the fleet (measured: the
    server's costliest call in bench/scale.py). The shared deployments (prefect.yaml's, whose
    `target` is only a default such as "default") show every service; a status whose block is
    unknown goes everywhere."""
    fixed = (deployment.parameters or {}).get("target")
    dedicated = bool(fixed) and deployment.name == f"{FLEET_RELEASE_PREFIX}{fixed}"
    return not (dedicated and status.target and fixed != status.target)


def update_deployments(status: ServiceStatus) -> list[str]:
    """Put the service's section in the description of every deployment of DEPLOYED_FLOWS that
    shows it (`shows`); the names of the deployments whose description holds it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    section = section_markdown(status)
    done: list[str] = []
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=DEPLOYED_FLOWS))
        )
        for deployment in deployments:
            if not shows(deployment, status):
                continue
            text = with_section(deployment.description, status.scope, section)
            if text != deployment.description:
                client.update_deployment(deployment.id, DeploymentUpdate(description=text))
            done.append(deployment.name)
    return done


def publish(status: ServiceStatus) -> list[str]:
    """The artifact, then the deployments' sections; the deployments updated."""
    with warnings.catch_warnings():
        # Outside a run (the CLI, a sweep) Prefect 3.8 still creates the artifact but warns that
        # it "is deprecated and will be removed in a later version" (prefect/artifacts.py): the
        # key's page shows it all the same; the deployments' section does not depend on it.
        warnings.filterwarnings("ignore", "Artifact creation outside", FutureWarning)
        publish_markdown(
            section_markdown(status, heading="#"),
            key=status_key(status.scope),
            description=status.headline()[:500],
        )
    return update_deployments(status)
