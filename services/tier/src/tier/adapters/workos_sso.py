"""SSO participation from WorkOS, through its official SDK.

An end user is a WorkOS organization whose `external_id` is the end user's id; it participates in
SSO when one of the organization's connections is in state `active`. Two listings, paged with the
SDK's cursors: GET /organizations and GET /connections.
"""

from __future__ import annotations

from datetime import datetime

from workos import AsyncWorkOSClient, WorkOSError
from workos.common.models.connection_state import ConnectionState

from tier.app.ports import ProviderError
from tier.domain.accounts import Signal, SignalKind

PAGE_SIZE = 100


class WorkOsSsoProvider:
    name = "workos"
    kind = SignalKind.SSO_ACTIVE

    def __init__(self, client: AsyncWorkOSClient) -> None:
        self._client = client

    async def fetch(self, observed_at: datetime) -> list[Signal]:
        try:
            end_user_of: dict[str, str] = {}
            organizations = await self._client.organizations.list_organizations(limit=PAGE_SIZE, order="asc")
            async for organization in organizations.auto_paging_iter():
                if organization.external_id:
                    end_user_of[organization.id] = organization.external_id
            with_sso: set[str] = set()
            connections = await self._client.sso.list_connections(limit=PAGE_SIZE, order="asc")
            async for connection in connections.auto_paging_iter():
                if connection.state == ConnectionState.ACTIVE and connection.organization_id:
                    with_sso.add(connection.organization_id)
        except WorkOSError as error:
            raise ProviderError(str(error)) from error
        return [
            Signal(
                end_user, self.kind, "true" if organization in with_sso else "false", self.name, observed_at
            )
            for organization, end_user in end_user_of.items()
        ]
