"""Run the emulator: python -m sandbox.emulator --port P [--scenario FILE] [--registry-url URL]
[--docker-host SOCKET] [--state-dir DIR]."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from sandbox.emulator.app import create_app
from sandbox.scenario import load_scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--scenario", default=None)
    parser.add_argument("--registry-url", default=None)
    parser.add_argument(
        "--docker-host", default=None, help="unix:// socket of the sandbox's dockerd"
    )
    parser.add_argument(
        "--state-dir",
        default=None,
        help="folder for what must outlive a restart (Secret Manager entries); none: memory only",
    )
    args = parser.parse_args()
    app = create_app(
        load_scenario(args.scenario),
        registry_url=args.registry_url,
        docker_host=args.docker_host,
        state_dir=Path(args.state_dir) if args.state_dir else None,
    )
    app.state.sandbox.base_url = f"http://{args.host}:{args.port}"
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
