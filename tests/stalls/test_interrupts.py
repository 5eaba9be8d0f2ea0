"""Interrupts pass through the deploy step untouched (issue 24): a Ctrl-C, a `sys.exit`, a
cancelled coroutine or Prefect's TerminationSignal that arrives while the GPU deploy waits on Cloud
Run reaches the flow (and its hooks) as itself. Before, `deploy_gpu_step` caught BaseException
and classified it: a KeyboardInterrupt came out as ConfigurationError ("Cloud Run refused the
deploy in europe-west1:  | cause: KeyboardInterrupt").

The interrupt is a real signal delivered to the main thread while its Cloud Run call is blocked
on a server that never answers; its handler raises the interrupt, as Python's SIGINT handler
and Prefect's SIGTERM handler do."""

from __future__ import annotations

import asyncio
import signal
import threading

import pytest
from prefect.exceptions import TerminationSignal

from shipyard.blocks.cloud import GoogleCloud
from shipyard.blocks.release_target import ReleaseTarget
from shipyard.flows.deploy.region_deploy import deploy_gpu_step
from shipyard.flows.release.context import RunContext

CALL_S = 5.0  # the call is interrupted long before its deadline


@pytest.mark.parametrize(
    "interrupt",
    [KeyboardInterrupt, SystemExit, asyncio.CancelledError, TerminationSignal],
    ids=lambda cls: cls.__name__,
)
def test_an_interrupt_during_the_gpu_deploy_passes_through_untouched(stall, interrupt):
    cloud = GoogleCloud(endpoint=stall.url, project="stall-project", call_timeout_s=CALL_S)
    target = ReleaseTarget(service="svc", cloud=cloud, regions=["europe-west1"])
    ctx = RunContext(target, "v1.2.3", "registry.local/svc@sha256:" + "0" * 64)
    raised = interrupt(15) if interrupt is TerminationSignal else interrupt()

    def handler(signum, frame):
        raise raised

    previous = signal.signal(signal.SIGUSR1, handler)
    stall.first_request.clear()
    main = threading.main_thread().ident

    def deliver() -> None:
        if stall.first_request.wait(CALL_S):  # the deploy's first call is blocked on the stall
            signal.pthread_kill(main, signal.SIGUSR1)

    sender = threading.Thread(target=deliver, daemon=True)
    sender.start()
    try:
        with pytest.raises(BaseException) as caught:
            deploy_gpu_step.fn(ctx, "europe-west1")
    finally:
        sender.join(CALL_S + 1)
        signal.signal(signal.SIGUSR1, previous)
    assert caught.value is raised, repr(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None
