"""tests/stalls: every outside client against a server that accepts and never answers."""

from __future__ import annotations

import pytest
from stall_server import StallServer


@pytest.fixture(scope="module")
def stall():
    server = StallServer()
    yield server
    server.stop()
