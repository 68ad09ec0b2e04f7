from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.tenants.issuer import OAuthIssuer


@pytest.fixture
async def oauth_issuer() -> AsyncIterator[OAuthIssuer]:
    """A local OAuth issuer on 127.0.0.1 minting tokens on the system clock."""
    async with OAuthIssuer() as issuer:
        yield issuer
