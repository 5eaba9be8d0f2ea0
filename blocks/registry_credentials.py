"""Registry credentials from Prefect blocks, for the mirror's source and destination registries.

- A prefect-docker `DockerRegistryCredentials` block: its username and password (Docker Hub, GHCR,
  any registry with a token or password).
- A prefect-gcp `GcpCredentials` block for Artifact Registry: user `oauth2accesstoken`, password a
  fresh access token from the service account.

The password stays a pydantic SecretStr end to end; messages name the block, never the secret.
"""

from __future__ import annotations

import asyncio

from pydantic import SecretStr

from shipyard.tasks.errors import PermanentError
from shipyard.tasks.registry import RegistryCredentials

__all__ = ["credentials_from_docker_block", "credentials_from_gcp_block"]


async def credentials_from_docker_block(block_name: str) -> RegistryCredentials:
    """Load prefect-docker's DockerRegistryCredentials block `block_name`."""
    from prefect_docker import DockerRegistryCredentials

    try:
        block = await DockerRegistryCredentials.aload(block_name)
    except ValueError as exc:
        raise PermanentError(
            f"DockerRegistryCredentials block {block_name!r} was not found: create it in the "
            "Prefect UI (Blocks > Docker Registry Credentials) or with "
            "DockerRegistryCredentials(username=..., password=..., registry_url=...).save(NAME)"
        ) from exc
    return RegistryCredentials(
        block.username, block.password, f"DockerRegistryCredentials block {block_name!r}"
    )


async def credentials_from_gcp_block(block_name: str) -> RegistryCredentials:
    """Artifact Registry: user `oauth2accesstoken`, password an access token from GcpCredentials."""
    from prefect_gcp import GcpCredentials

    block = await GcpCredentials.aload(block_name)
    token = await asyncio.to_thread(block.get_access_token)
    return RegistryCredentials(
        "oauth2accesstoken",
        SecretStr(token),
        f"GcpCredentials block {block_name!r} (oauth2accesstoken)",
    )
