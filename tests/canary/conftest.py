"""The canary tests' service: a real process (uvicorn) on a free loopback port, once per session."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from shipyard.tasks.waiting import Deadline, NotYet, wait_for

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def guess_service(tmp_path_factory) -> str:
    """Base URL of tests/canary/guess_service_app.py, served by uvicorn in its own process."""
    port = _free_port()
    log = tmp_path_factory.mktemp("guess") / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(HERE),
                "guess_service_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"the guess service exited: {log.read_text()[-2000:]}")
        try:
            httpx.get(f"{url}/health", timeout=2).raise_for_status()
        except httpx.HTTPError as exc:
            raise NotYet(exc) from None

    try:
        wait_for(
            up, what="the guess service", first_delay_s=0.05, max_delay_s=0.5, deadline=Deadline(30)
        )
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _png(width: int, height: int = 12) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), color=200).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict[int, Path]:
    """digit -> a PNG file on disk the guess service reads as that digit (width 10 + digit)."""
    folder = tmp_path_factory.mktemp("digits")
    out = {}
    for digit, name in [(7, "seven"), (3, "three"), (4, "four")]:
        path = folder / f"{name}.png"
        path.write_bytes(_png(10 + digit))
        out[digit] = path
    return out
