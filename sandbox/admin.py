"""A small client for the emulator's /_sandbox/* routes (used by the CLI, tests and benches)."""

from __future__ import annotations

from typing import Any

import httpx


class SandboxAdmin:
    def __init__(self, emulator_url: str, timeout: float = 10.0):
        self.url = emulator_url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def health(self) -> dict:
        return self._http.get("/_sandbox/health").raise_for_status().json()

    def reset(self, scenario: str | None = None, scenario_data: dict | None = None) -> dict:
        """Forget every resource and load a scenario (a name/path, or inline data)."""
        body: dict[str, Any] = {}
        if scenario_data is not None:
            body["scenario_data"] = scenario_data
        elif scenario is not None:
            body["scenario"] = scenario
        response = self._http.post("/_sandbox/reset", json=body)
        if response.status_code != 200:
            raise ValueError(response.json().get("error", {}).get("message", response.text))
        return response.json()

    def calls(self) -> dict[str, int]:
        """Counters of notable calls (e.g. 'quotas.create_preference', 'build.create')."""
        return self._http.get("/_sandbox/calls").raise_for_status().json()

    def release_builds(self) -> dict:
        """Let builds held by the scenario (`builds.hold`) go on."""
        return self._http.post("/_sandbox/builds/release").raise_for_status().json()

    def logs(self) -> list[dict]:
        return self._http.get("/_sandbox/logs").raise_for_status().json()["entries"]

    def traffic_history(self, service: str | None = None) -> list[dict]:
        """Every traffic state of a Cloud Run service (short or full name; None: all), in
        time order: see sandbox/invariants.py for the entry shape and the checks."""
        params = {"service": service} if service else {}
        response = self._http.get("/_sandbox/traffic-history", params=params)
        return response.raise_for_status().json()["history"]

    def put_secret(self, name: str, value: str) -> str:
        """Add or replace a Secret Manager entry (kept across resets); returns its sha256."""
        response = self._http.put(f"/_sandbox/secrets/{name}", json={"value": value})
        return str(response.raise_for_status().json()["sha256"])

    def secret_digest(self, name: str) -> str | None:
        """The sha256 of a Secret Manager entry's value, or None when there is none."""
        response = self._http.get(f"/_sandbox/secrets/{name}")
        if response.status_code == 404:
            return None
        return str(response.raise_for_status().json()["sha256"])

    def get(self, path: str) -> Any:
        return self._http.get(path).raise_for_status().json()

    def close(self) -> None:
        self._http.close()
