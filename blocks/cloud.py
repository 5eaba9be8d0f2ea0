"""One way to get the official Google clients, for Google or for the sandbox.

Production: credentials from a prefect-gcp `GcpCredentials` block. Sandbox: when an
endpoint is configured (the block's `endpoint` field, else the environment variable
SHIPYARD_GOOGLE_ENDPOINT), every client talks to that endpoint with anonymous
credentials. That is the only switch: flows and tasks never ask which cloud it is.
All clients use the REST transport on both sides.
"""

from __future__ import annotations

import os
from typing import Any

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import cloudquotas_v1, run_v2
from google.cloud.devtools import cloudbuild_v1
from prefect.blocks.core import Block
from prefect_gcp import GcpCredentials
from pydantic import Field

ENDPOINT_ENV = "SHIPYARD_GOOGLE_ENDPOINT"
PROJECT_ENV = "SHIPYARD_GCP_PROJECT"
SANDBOX_PROJECT = "shipyard-sandbox"


class GoogleCloud(Block):
    """Where the Google APIs are and who Shipyard is when it calls them."""

    _block_type_name = "Shipyard Google Cloud"
    _block_type_slug = "shipyard-google-cloud"
    _description = (
        "Google Cloud project and credentials for Shipyard; set `endpoint` (or the "
        "SHIPYARD_GOOGLE_ENDPOINT environment variable) to use the local sandbox instead."
    )

    project: str | None = Field(
        default=None,
        description="Project id. Default: the GcpCredentials project, else SHIPYARD_GCP_PROJECT.",
    )
    gcp_credentials: GcpCredentials | None = Field(
        default=None, description="prefect-gcp credentials (service account) for Google."
    )
    endpoint: str | None = Field(
        default=None,
        description="Send every API call here with anonymous credentials (the sandbox), "
        "e.g. http://127.0.0.1:8123. Default: SHIPYARD_GOOGLE_ENDPOINT, else Google.",
    )

    def resolved_endpoint(self) -> str | None:
        return self.endpoint or os.environ.get(ENDPOINT_ENV) or None

    def resolved_project(self) -> str:
        project = (
            self.project
            or (self.gcp_credentials.project if self.gcp_credentials else None)
            or os.environ.get(PROJECT_ENV)
        )
        if project:
            return project
        if self.resolved_endpoint():
            return SANDBOX_PROJECT
        raise ValueError(
            "GoogleCloud.project is not set: give the block a project, a GcpCredentials block "
            f"with a project, or set {PROJECT_ENV}"
        )

    def credentials(self) -> Credentials:
        if self.resolved_endpoint():
            return AnonymousCredentials()
        if self.gcp_credentials is None:
            # Application default credentials (e.g. on a Cloud Run worker).
            import google.auth

            creds, _ = google.auth.default(
                scopes=["https://www.googleapis.com/auth/cloud-platform"]
            )
            return creds
        return self.gcp_credentials.get_credentials_from_service_account()

    def _gapic_kwargs(self) -> dict[str, Any]:
        endpoint = self.resolved_endpoint()
        kwargs: dict[str, Any] = {"transport": "rest", "credentials": self.credentials()}
        if endpoint:
            kwargs["client_options"] = ClientOptions(api_endpoint=endpoint)
        return kwargs

    def services_client(self) -> run_v2.ServicesClient:
        return run_v2.ServicesClient(**self._gapic_kwargs())

    def revisions_client(self) -> run_v2.RevisionsClient:
        return run_v2.RevisionsClient(**self._gapic_kwargs())

    def builds_client(self) -> cloudbuild_v1.CloudBuildClient:
        return cloudbuild_v1.CloudBuildClient(**self._gapic_kwargs())

    def quotas_client(self) -> cloudquotas_v1.CloudQuotasClient:
        return cloudquotas_v1.CloudQuotasClient(**self._gapic_kwargs())

    def logging_client(self):
        """google-cloud-logging's Client over HTTP (its GAPIC client has no REST transport)."""
        from google.cloud import logging_v2

        endpoint = self.resolved_endpoint()
        options = ClientOptions(api_endpoint=endpoint) if endpoint else None
        return logging_v2.Client(
            project=self.resolved_project(),
            credentials=self.credentials(),
            _use_grpc=False,
            client_options=options,
        )


def default_cloud() -> GoogleCloud:
    """The configuration when no block is named: environment only."""
    return GoogleCloud()
