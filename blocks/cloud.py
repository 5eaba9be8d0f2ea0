"""One way to get the official Google clients, for Google or for the sandbox.

Production: credentials from a prefect-gcp `GcpCredentials` block. Sandbox: when an
endpoint is configured, every client talks to that endpoint with anonymous credentials. That
is the only switch: flows and tasks never ask which cloud it is. All clients use the REST
transport on both sides.

The environment (SHIPYARD_GOOGLE_ENDPOINT, SHIPYARD_GCP_PROJECT) fills only what a block leaves
open; it never overrides what a saved block says. A saved block, or one that names
credentials, says where Google is: without `endpoint` it means Google itself, whatever the
environment says, so a worker whose environment still points at a sandbox cannot send
production calls there with anonymous credentials. Only a block built on the spot and never
saved (`GoogleCloud()`, what a release target without a `cloud` block uses) takes its
endpoint from the environment.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import cloudquotas_v1, run_v2
from google.cloud.devtools import cloudbuild_v1
from prefect.blocks.core import Block
from prefect_gcp import GcpCredentials
from pydantic import Field, PrivateAttr

from shipyard.blocks.schema_cache import CachedSchema
from shipyard.tasks import deadlines as call_deadlines

if TYPE_CHECKING:
    from google.cloud import logging_v2

ENDPOINT_ENV = "SHIPYARD_GOOGLE_ENDPOINT"
PROJECT_ENV = "SHIPYARD_GCP_PROJECT"
SANDBOX_PROJECT = "shipyard-sandbox"
# The GoogleCloud block `shipyard setup` saves (deployments/demo/sandbox_setup.py CLOUD_BLOCK): a
# ReleaseTarget whose `cloud` is empty uses it when the environment names no project or endpoint.
SETUP_CLOUD_BLOCK = "sandbox"


class GoogleCloud(CachedSchema, Block):
    """Where the Google APIs are and who Shipyard is when it calls them."""

    _block_type_name = "Shipyard Google Cloud"
    _block_type_slug = "shipyard-google-cloud"
    _description = (
        "Google Cloud project and credentials for Shipyard; set `endpoint` to use the local "
        "sandbox instead. A saved block without `endpoint` always calls Google."
    )

    project: str | None = Field(
        default=None,
        title="Project",
        description="Project id. Default: the GcpCredentials project, else SHIPYARD_GCP_PROJECT.",
    )
    gcp_credentials: GcpCredentials | None = Field(
        default=None,
        title="GCP credentials",
        description="prefect-gcp credentials (service account) for Google.",
    )
    endpoint: str | None = Field(
        default=None,
        title="Endpoint",
        description="Send every API call here with anonymous credentials (the sandbox), "
        "e.g. http://127.0.0.1:8123. Empty: Google (an unsaved block without credentials "
        "takes SHIPYARD_GOOGLE_ENDPOINT).",
    )

    call_timeout_s: float | None = Field(
        default=None,
        gt=0,
        title="Call timeout (s)",
        description="Seconds one Google API request may take (Cloud Run, Cloud Build, Cloud "
        "Quotas, Cloud Logging, each long-running operation poll) before it is given up as a "
        "transient error. Empty: 30 s for reads and polls, 60 s for writes.",
    )

    # Set by the saved block this one is stored in (a nested block saved inline has no document
    # of its own): see `inside_saved_block`.
    _in_saved_block: bool = PrivateAttr(default=False)

    def inside_saved_block(self) -> GoogleCloud:
        """Mark this block as part of a saved one (e.g. a loaded ReleaseTarget's `cloud`)."""
        self._in_saved_block = True
        return self

    def says_where_google_is(self) -> bool:
        """True for a saved block (loaded, or part of a loaded one) and for a block that names
        credentials: its empty `endpoint` means Google, not "ask the environment"."""
        return (
            self._block_document_id is not None
            or self._in_saved_block
            or self.gcp_credentials is not None
        )

    pipeline_logs: bool | None = Field(
        default=None,
        title="Pipeline logs",
        description="Send the pipeline's own log lines to Cloud Logging (log `shipyard`, labels "
        "service, git tag, stage, region, revision, flow run id). Default: on with the sandbox "
        "endpoint, off on Google (set true to opt in).",
    )

    def pipeline_logging(self) -> bool:
        """Whether the pipeline's log lines go to Cloud Logging (see `pipeline_logs`)."""
        if self.pipeline_logs is not None:
            return self.pipeline_logs
        return bool(self.resolved_endpoint())

    def resolved_endpoint(self) -> str | None:
        if self.endpoint:
            return self.endpoint
        if self.says_where_google_is():
            return None
        return os.environ.get(ENDPOINT_ENV) or None

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
            f"with a project, or set {PROJECT_ENV} (Google); on the sandbox choose the "
            f"{SETUP_CLOUD_BLOCK!r} block that `shipyard setup` saves"
        )

    def credentials(self) -> Credentials:
        if self.resolved_endpoint():
            return AnonymousCredentials()  # type: ignore[no-untyped-call]  # google-auth: unannotated
        if self.gcp_credentials is None:
            # Application default credentials (e.g. on a Cloud Run worker).
            import google.auth

            scopes = ["https://www.googleapis.com/auth/cloud-platform"]
            creds: Credentials = google.auth.default(scopes=scopes)[0]
            return creds
        from_block: Credentials = self.gcp_credentials.get_credentials_from_service_account()
        return from_block

    def id_token(self, audience: str) -> str:
        """An ID token for invoking a private Cloud Run URL, from the same credentials as every
        client: the `GcpCredentials` service account, else application default credentials;
        with an endpoint (the sandbox), the token that endpoint mints for it."""
        import google.auth.transport.requests

        endpoint = self.resolved_endpoint()
        if endpoint:
            import httpx

            base = endpoint if "://" in endpoint else f"http://{endpoint}"
            answer = httpx.get(
                f"{base.rstrip('/')}/_sandbox/id-token", params={"audience": audience}, timeout=30
            )
            answer.raise_for_status()
            return str(answer.json()["token"])
        request = google.auth.transport.requests.Request()
        creds = self.gcp_credentials
        if creds is not None and (creds.service_account_info or creds.service_account_file):
            from google.oauth2 import service_account

            if creds.service_account_info:
                info = dict(creds.service_account_info.get_secret_value())
                id_creds = service_account.IDTokenCredentials.from_service_account_info(  # type: ignore[no-untyped-call]  # google-auth: unannotated
                    info, target_audience=audience
                )
            else:
                id_creds = service_account.IDTokenCredentials.from_service_account_file(  # type: ignore[no-untyped-call]  # google-auth: unannotated
                    str(creds.service_account_file), target_audience=audience
                )
            id_creds.refresh(request)
            return str(id_creds.token)
        import google.oauth2.id_token

        token = google.oauth2.id_token.fetch_id_token(request, audience)  # type: ignore[no-untyped-call]  # google-auth: unannotated
        return str(token)

    def deadlines(self) -> call_deadlines.Deadlines:
        """The deadlines of this block's clients (tasks/deadlines.py, `call_timeout_s`)."""
        if self.call_timeout_s is None:
            return call_deadlines.DEFAULT
        return call_deadlines.DEFAULT.google(self.call_timeout_s)

    def _gapic_kwargs(self) -> dict[str, Any]:
        endpoint = self.resolved_endpoint()
        kwargs: dict[str, Any] = {"transport": "rest", "credentials": self.credentials()}
        if endpoint:
            kwargs["client_options"] = ClientOptions(api_endpoint=endpoint)
        return kwargs

    # Each client carries its deadlines (tasks/deadlines.py `of`): the tasks that call it pass
    # them as `timeout=` on every call.

    def services_client(self) -> run_v2.ServicesClient:
        client = run_v2.ServicesClient(**self._gapic_kwargs())
        return call_deadlines.attach(client, self.deadlines())

    def revisions_client(self) -> run_v2.RevisionsClient:
        client = run_v2.RevisionsClient(**self._gapic_kwargs())
        return call_deadlines.attach(client, self.deadlines())

    def builds_client(self) -> cloudbuild_v1.CloudBuildClient:
        client = cloudbuild_v1.CloudBuildClient(**self._gapic_kwargs())
        return call_deadlines.attach(client, self.deadlines())

    def quotas_client(self) -> cloudquotas_v1.CloudQuotasClient:
        client = cloudquotas_v1.CloudQuotasClient(**self._gapic_kwargs())
        return call_deadlines.attach(client, self.deadlines())

    def logging_client(self) -> logging_v2.Client:
        """google-cloud-logging's Client over HTTP (its GAPIC client has no REST transport)."""
        from google.cloud import logging_v2

        endpoint = self.resolved_endpoint()
        options = ClientOptions(api_endpoint=endpoint) if endpoint else None
        credentials = self.credentials()
        # The library sends every request with its own 60 s timeout and has no per-call
        # setting: a session that caps each request at the Logging deadline.
        session = call_deadlines.capped_session(credentials, self.deadlines().logging_s)
        client: logging_v2.Client = logging_v2.Client(  # type: ignore[no-untyped-call]  # google-cloud-logging: unannotated
            project=self.resolved_project(),
            credentials=credentials,
            _http=session,
            _use_grpc=False,
            client_options=options,
        )
        return call_deadlines.attach(client, self.deadlines())


def default_cloud() -> GoogleCloud:
    """The configuration when no block is named: environment only."""
    return GoogleCloud()


def environment_names_google() -> bool:
    """Whether the environment says where Google is (a project or an endpoint), so that a target
    without a `cloud` block can use `default_cloud()`."""
    return bool(os.environ.get(PROJECT_ENV) or os.environ.get(ENDPOINT_ENV))
