"""The release target's GPU and CPU revision specs as Cloud Run RevisionTemplates, and what a
revision that did not start says (`startup_verdict`): the setting its wait followed, and the
first error lines of the revision's own log."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from google.api_core import exceptions as gexc
from google.cloud import run_v2

from shipyard.blocks.revision_templates import RevisionSpec
from shipyard.flows.release.context import RunContext, Wait
from shipyard.tasks import cloud_run as cr
from shipyard.tasks.deploy_errors import error_message, is_image_fault, is_quota_message
from shipyard.tasks.revision_logs import first_error_lines

ROLE_LABEL = "shipyard-role"
TAG_LABEL = "shipyard-release"


def build_template(
    spec: RevisionSpec,
    *,
    image: str,
    revision: str,
    gpu_type: str,
    zonal_redundancy: bool,
    labels: dict[str, str],
) -> run_v2.RevisionTemplate:
    """A RevisionSpec as Cloud Run's RevisionTemplate (secrets by Secret Manager reference)."""
    limits = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.gpu:
        limits["nvidia.com/gpu"] = str(spec.gpu)
    env = [run_v2.EnvVar(name=k, value=v) for k, v in sorted(spec.env.items())]
    env += [
        run_v2.EnvVar(
            name=k,
            value_source=run_v2.EnvVarSource(
                secret_key_ref=run_v2.SecretKeySelector(secret=ref.secret, version=ref.version)
            ),
        )
        for k, ref in sorted(spec.secret_env.items())
    ]
    template = run_v2.RevisionTemplate(
        revision=revision,
        labels=labels,
        scaling=run_v2.RevisionScaling(
            min_instance_count=spec.min_instances, max_instance_count=spec.max_instances
        ),
        containers=[
            run_v2.Container(
                image=spec.image or image,
                env=env,
                resources=run_v2.ResourceRequirements(
                    limits=limits,
                    cpu_idle=spec.cpu_throttling,
                    startup_cpu_boost=spec.startup_cpu_boost,
                ),
                ports=[run_v2.ContainerPort(container_port=spec.port)],
            )
        ],
        timeout=cr.seconds(spec.timeout_s),
        max_instance_request_concurrency=spec.concurrency,
    )
    if spec.startup_probe_s is not None:
        # One TCP check on the container port after the whole window (Cloud Run's default
        # probe is the same shape with 240 s).
        template.containers[0].startup_probe = run_v2.Probe(
            tcp_socket=run_v2.TCPSocketAction(port=spec.port),
            timeout_seconds=spec.startup_probe_s,
            period_seconds=spec.startup_probe_s,
            failure_threshold=1,
        )
    if spec.service_account:
        template.service_account = spec.service_account
    if spec.gpu:
        template.node_selector = run_v2.NodeSelector(accelerator=gpu_type)
        template.gpu_zonal_redundancy_disabled = not zonal_redundancy
    return template


def _labels(ctx: RunContext, role: str) -> dict[str, str]:
    tag = re.sub(r"[^a-z0-9_-]+", "-", ctx.git_tag.lower())[:63]
    return {ROLE_LABEL: role, TAG_LABEL: tag}


def gpu_template(ctx: RunContext, region: str) -> run_v2.RevisionTemplate:
    t = ctx.target
    return build_template(
        t.gpu_template,
        image=ctx.image or "",
        revision=ctx.gpu_revision_in(region),
        gpu_type=t.gpu_type,
        zonal_redundancy=t.gpu_zonal_redundancy,
        labels=_labels(ctx, "gpu"),
    )


def cpu_template(ctx: RunContext) -> run_v2.RevisionTemplate:
    t = ctx.target
    return build_template(
        t.cpu_template,
        image=ctx.image or "",
        revision=ctx.cpu_revision,
        gpu_type=t.gpu_type,
        zonal_redundancy=True,
        labels=_labels(ctx, "cpu-baseline"),
    )


def _told(ctx: RunContext, region: str, revision: str, message: str, *settings: str) -> str:
    """The revision's own log lines first (what the user acts on), then Cloud Run's message,
    the settings involved, and the filter that shows every error line of the revision."""
    found = first_error_lines(
        ctx.cloud, service=ctx.target.service, region=region, revision=revision, besides=message
    )
    parts = (found.cited(), message.rstrip(". "), *settings, found.where())
    return "; ".join(p for p in parts if p)


@contextmanager
def startup_verdict(ctx: RunContext, region: str, revision: str) -> Iterator[Wait]:
    """Wait for a new revision with `ctx.revision_wait` (yielded); when it does not start, the
    error says why in the user's terms: the wait that ran out names the settings it followed
    and their values, a failed start names the startup probe setting, and both cite the first
    error lines of the revision's log (tasks/revision_logs.py). The error types stay what the
    classification reads (tasks/deploy_errors.py): a quota refusal is never rewritten."""
    try:
        yield ctx.revision_wait(revision)
    except cr.ReadyTimeout as exc:
        told = _told(ctx, region, revision, str(exc), ctx.wait_setting(revision))
        raise cr.ReadyTimeout(told) from exc
    except cr.RevisionFailed as exc:
        if is_quota_message(exc.message):
            raise
        extra = [ctx.probe_setting(revision)] if is_image_fault(exc.message, exc.reason) else []
        extra += [fix] if (fix := missing_secret_fix(ctx, revision, exc.message)) else []
        told = _told(ctx, region, revision, exc.message, *extra)
        raise cr.RevisionFailed(exc.revision, told, exc.reason) from exc
    except gexc.GoogleAPICallError as exc:
        # The service update's operation fails with the revision's message ("Revision '…' is
        # not ready and cannot serve traffic. The user-provided container failed to start…"):
        # a failed start, told as the revision's failure.
        message = error_message(exc)
        fix = missing_secret_fix(ctx, revision, message)
        if fix and not is_quota_message(message):
            told = _told(ctx, region, revision, message, fix)
            raise cr.RevisionFailed(revision, told, MISSING_SECRET_REASON) from exc
        if is_quota_message(message) or not is_image_fault(message):
            raise
        told = _told(ctx, region, revision, message, ctx.probe_setting(revision))
        raise cr.RevisionFailed(revision, told, "") from exc


# Cloud Run fails a revision whose secret_env names a Secret Manager secret (or version) that
# does not exist: Condition.RevisionReason SECRETS_ACCESS_CHECK_FAILED (googleapis
# google/cloud/run/v2/condition.proto), its message naming the secret's resource,
# "…secretKeyRef: Secret projects/P/secrets/NAME/versions/latest was not found".
MISSING_SECRET_REASON = "SECRETS_ACCESS_CHECK_FAILED"  # noqa: S105 - an enum name, no secret
_MISSING_SECRET = re.compile(r"secrets/([A-Za-z0-9_-]+)/versions/\S+ (?:was )?not found", re.I)


def is_missing_secret(message: str) -> bool:
    return _MISSING_SECRET.search(message) is not None


def missing_secret_fix(ctx: RunContext, revision: str, message: str) -> str | None:
    """What is missing and how to restore it, when a revision failed for want of a secret (a
    sandbox restart that lost Secret Manager, a secret deleted on Google); else None."""
    match = _MISSING_SECRET.search(message)
    if match is None:
        return None
    name = match.group(1)
    field = ctx.template_field(revision)
    spec: RevisionSpec = getattr(ctx.target, field)
    names = [k for k, ref in spec.secret_env.items() if ref.secret.rsplit("/", 1)[-1] == name]
    uses = f"{field}.secret_env {', '.join(names)}" if names else f"{field}.secret_env"
    return (
        f"missing: the Secret Manager secret {name!r} (ReleaseTarget.{uses} refers to it); no "
        f"traffic went to {revision}. Restore it: `shipyard setup` re-creates the internal "
        f"token's secret (a sandbox restart that lost it included); on Google: `gcloud secrets "
        f"create {name} --data-file=-` (or `gcloud secrets versions add {name} "
        "--data-file=-`) with its value; then release again"
    )
