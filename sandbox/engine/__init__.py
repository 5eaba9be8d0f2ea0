"""The sandbox's container engine: a Docker daemon from Debian's `docker.io`, the base root
filesystem built from Debian packages, real builds and revision containers on that daemon.

Where the daemon cannot start (not root, package missing), the sandbox says so in one line and
keeps its in-process stand-ins (sandbox/buildkit/, revisions served from this checkout).
"""
