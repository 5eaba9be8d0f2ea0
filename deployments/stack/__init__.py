"""The local distributed stack: PostgreSQL from Debian's package (deployments/stack/postgres.py),
a Prefect server on it with migrations as their own step (prefect_server.py), the worker image
(worker_image.py) and workers on a Docker or process work pool (workers.py). Everything lives
under $SHIPYARD_HOME/stack and is stopped by PID."""
