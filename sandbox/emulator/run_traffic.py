"""Cloud Run traffic in the emulator: targets validated and resolved to revisions (Google
refuses traffic to a revision that is not Ready), the traffic history, and which revision a
request to a service URL reaches.
"""

from __future__ import annotations

import re

from sandbox.emulator.core import ApiError, now_rfc3339
from sandbox.emulator.run_limits import check_tag
from sandbox.emulator.run_resources import LATEST, REVISION, Revision, RunIndex, Service

_TAG = re.compile(r"^[a-z]([-a-z0-9]{0,44}[a-z0-9])?$")


class TrafficRules(RunIndex):
    """Traffic validation, resolution, history and routing over the index."""

    def _status_json(self, svc: Service, status: dict) -> dict:
        # A status names the revision the traffic reaches, LATEST included ("These entries
        # will always contain RevisionName references", Cloud Run's ServiceStatus.traffic).
        out = {
            "type": status["type"],
            "percent": status["percent"],
            "revision": status["revision"].rsplit("/", 1)[-1],
        }
        if status.get("tag"):
            out["tag"] = status["tag"]
            out["uri"] = self.uri(svc, status["tag"])
        return out

    def _validate_traffic(self, service: str, traffic: list[dict], new_rev: str) -> None:
        total = 0
        tags: set[str] = set()
        for i, target in enumerate(traffic):
            kind = target.get("type") or (REVISION if target.get("revision") else "")
            if kind not in (LATEST, REVISION):
                raise ApiError(
                    400,
                    f"service.traffic[{i}].type: set TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST or "
                    "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION.",
                )
            target["type"] = kind
            rev = target.get("revision", "")
            if rev.startswith(f"{service}/revisions/"):  # a full name: accept it, store short
                rev = target["revision"] = rev.rsplit("/", 1)[-1]
            if kind == LATEST and rev:
                raise ApiError(
                    400,
                    f"service.traffic[{i}]: a LATEST target must not name a revision "
                    f"(got '{rev}'); use TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION.",
                )
            if kind == REVISION and not rev:
                raise ApiError(400, f"service.traffic[{i}].revision: a revision is required.")
            percent = target.get("percent", 0)
            if not 0 <= percent <= 100:
                raise ApiError(
                    400,
                    f"service.traffic[{i}].percent: {percent} is out of range (0 to 100).",
                )
            total += percent
            tag = target.get("tag", "")
            if tag:
                if not _TAG.match(tag):
                    raise ApiError(
                        400,
                        f"service.traffic[{i}].tag: '{tag}' is not a valid tag: use lowercase "
                        "letters, digits and '-', starting with a letter (46 characters at most).",
                    )
                check_tag(service.rsplit("/", 1)[-1], tag)
                if tag in tags:
                    raise ApiError(
                        400, f"service.traffic[{i}].tag: tag '{tag}' is used more than once."
                    )
                tags.add(tag)
        if total != 100:
            raise ApiError(
                400,
                f"service.traffic: the traffic percents must add up to 100, got {total}.",
            )

    def _resolve_traffic(
        self, svc: Service, traffic: list[dict]
    ) -> tuple[list[dict], ApiError | None]:
        """Targets -> statuses with full revision names; refuse targets on non-Ready revisions."""
        statuses = []
        for target in traffic:
            percent = target.get("percent", 0)
            tag = target.get("tag", "")
            if target["type"] == LATEST:
                rev_name = svc.latest_ready
                if not rev_name:
                    latest = self.revisions.get(svc.latest_created)
                    detail = f" {latest.message}" if latest else ""
                    return [], ApiError(
                        400,
                        f"Service '{svc.short}' has no Ready revision to serve traffic.{detail}",
                        status="FAILED_PRECONDITION",
                    )
            else:
                rev_name = f"{svc.name}/revisions/{target['revision']}"
            rev = self.revisions.get(rev_name)
            if rev is None:
                # Not a synchronous 400: the operation fails, code 13, with Google's text
                # (quoted from a real deploy in terraform-google-modules/terraform-docs-samples#269).
                return [], ApiError(
                    500,
                    f"Revision '{target['revision']}' does not exist or is deleted. Update all "
                    "traffic to route to currently available revisions.",
                    status="INTERNAL",
                )
            if not rev.ready and (percent > 0 or tag):
                # Google's refusal, as the operation's error: "Error code 9, message: Revision
                # 'ci-static-ct-00001-6hx' is not ready and cannot serve traffic. The
                # user-provided container failed to start ..." (transparency-dev/tesseract#413;
                # code 9 = FAILED_PRECONDITION; gcloud prints the same text for `run services
                # update`); the requested split stays in `traffic` while `trafficStatuses` keep
                # what served ("a failed Cloud Run update-traffic operation left spec.traffic at
                # 90/10 even though status.traffic safely kept 100% on the old revision",
                # Lore-Hex/quill-router#781). A revision still starting is not Ready either:
                # refused the same way, except the service's latest one, whose start an update
                # waits for before it settles (RunStore.apply).
                detail = f" {rev.message}" if rev.message else ""
                return [], ApiError(
                    400,
                    f"Revision '{rev.short}' is not ready and cannot serve traffic.{detail}",
                    status="FAILED_PRECONDITION",
                )
            statuses.append(
                {"type": target["type"], "revision": rev_name, "percent": percent, "tag": tag}
            )
        return statuses, None

    # ---- traffic history ----------------------------------------------------------------

    def record(self, svc: Service, event: str, *, exists: bool = True, note: str = "") -> None:
        """One moment of a service's traffic, with each revision's Ready state then."""
        revisions = {r.short: r.ready for r in self.service_revisions(svc.name)}
        traffic = []
        if exists:
            for s in svc.statuses:
                short = s["revision"].rsplit("/", 1)[-1]
                traffic.append(
                    {
                        "revision": short,
                        "percent": s["percent"],
                        "tag": s.get("tag", ""),
                        "ready": revisions.get(short, False),
                        "latest": s["type"] == LATEST,
                    }
                )
        self.history.append(
            {
                "seq": len(self.history) + 1,
                "time": now_rfc3339(),
                "service": svc.short,
                "name": svc.name,
                "event": event,
                "exists": exists,
                "generation": svc.generation,
                "traffic": traffic,
                "revisions": revisions if exists else {},
                "note": note,
            }
        )

    def traffic_history(self, service: str | None = None) -> list[dict]:
        if not service:
            return list(self.history)
        return [h for h in self.history if service in (h["service"], h["name"])]

    # ---- serving ------------------------------------------------------------------------

    def route(self, host: str) -> tuple[Service, Revision | None] | None:
        """The service and the revision a request to this host reaches (None: unknown host)."""
        tag, sep, rest = host.partition("---")
        if not sep:
            tag, rest = "", host
        for svc in self.services.values():
            if svc.host() != rest:
                continue
            if tag:
                status = next((s for s in svc.statuses if s.get("tag") == tag), None)
                if status is None:
                    return None
                return svc, self.revisions.get(status["revision"])
            weighted = [s for s in svc.statuses if s["percent"] > 0]
            if not weighted:
                return svc, None
            point = self.state.rng.random() * sum(s["percent"] for s in weighted)
            for s in weighted:
                point -= s["percent"]
                if point < 0:
                    return svc, self.revisions.get(s["revision"])
            return svc, self.revisions.get(weighted[-1]["revision"])
        return None
