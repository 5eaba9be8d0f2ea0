"""The Prefect API's writes that a release waits on (Variables: the ledger, the slot's lease)
have a deadline too: Prefect's client sends every request with PREFECT_API_REQUEST_TIMEOUT
(60 s by default) and retries PREFECT_CLIENT_MAX_RETRIES times. Against a Prefect API that
accepts and never answers, a write ends within those, with a transient error."""

from __future__ import annotations

from api_switch_kit import pointed_at
from prefect.variables import Variable
from stall_server import bound, ended

from shipyard.tasks.errors import is_transient

CALL_S = 0.5


def test_a_prefect_api_write_ends_within_the_clients_timeout(stall):
    def write() -> None:
        with pointed_at(
            f"{stall.url}/api", PREFECT_API_REQUEST_TIMEOUT=CALL_S, PREFECT_CLIENT_MAX_RETRIES=0
        ):
            Variable.set("shipyard-stall-probe", "x", overwrite=True)

    error, seconds = ended(write, bound(CALL_S))
    assert error is not None and is_transient(error), repr(error)
    assert seconds < bound(CALL_S)
