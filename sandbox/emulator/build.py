"""Emulated API module (to be filled): register(app, state) adds its routes."""

from __future__ import annotations

from fastapi import FastAPI

from sandbox.emulator.core import SandboxState


def register(app: FastAPI, state: SandboxState) -> None:
    """Add this API's routes to the app."""
