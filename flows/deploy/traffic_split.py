"""A service's traffic split pinned to named revisions (what every traffic update of the
release starts from), and the tags the release puts on revisions."""

from __future__ import annotations

from google.cloud import run_v2

from shipyard.tasks import cloud_run as cr

CANARY_TAG = "canary"
PRIOR_TAG = "prior"
BASELINE_TAG = "baseline"


def pinned_traffic(
    service: run_v2.Service, drop: frozenset[str] | set[str] = frozenset()
) -> list[cr.Traffic]:
    """The split the service serves (trafficStatuses: after a failed update the spec still
    holds what was refused) with LATEST replaced by the revision it means (Cloud Run: the
    latest *ready* revision), so that a template change cannot move traffic; without the
    `canary` tag, without revisions in `drop`, without untagged 0% entries."""
    latest = cr.short_name(service.latest_ready_revision) if service.latest_ready_revision else ""
    pinned: list[cr.Traffic] = []
    for t in cr.serving_traffic(service):
        revision = latest if t.latest else t.revision
        tag = None if t.tag == CANARY_TAG else t.tag
        if not revision or revision in drop:
            continue
        if t.percent == 0 and tag is None:
            continue
        pinned.append(cr.Traffic(revision=revision, percent=t.percent, tag=tag))
    return _merged(pinned)


def _merged(traffic: list[cr.Traffic]) -> list[cr.Traffic]:
    """One untagged entry per revision (LATEST and a pinned entry may name the same one)."""
    out: list[cr.Traffic] = []
    for t in traffic:
        same = next((o for o in out if o.revision == t.revision and not o.tag and not t.tag), None)
        if same is not None:
            out[out.index(same)] = cr.Traffic(t.revision, same.percent + t.percent)
        else:
            out.append(t)
    return out
