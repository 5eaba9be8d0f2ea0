# Two commands that work on a fresh Debian machine as root:
#   make demo   the full pipeline on the sandbox: mirror, prewarm, build, release (local cloud on loopback)
#   make test   the test suite
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
APT_PKGS := docker-registry skopeo git chromium docker.io mmdebstrap debootstrap postgresql redis-server
# pyproject asks prefect>=3.8.8,<4; the venv (so CI) installs the lower bound of that range.
PREFECT_FLOOR := 3.8.8
# The base root filesystem (Debian bookworm minbase, no Python, sandbox/engine/rootfs.py; its cache
# key changes with what goes in, so an old one is rebuilt, ~50-70 s) is built once per
# machine at this stable path, before the tests, so that neither a fresh test home nor the demo
# pays for debootstrap again.
export SHIPYARD_ROOTFS_CACHE ?= $(HOME)/.cache/shipyard/rootfs

# Some machines set PYTHONDONTWRITEBYTECODE=1: every Python process (each Prefect server,
# emulator, CLI call) would then recompile all its imports, costing seconds each time.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup system-packages links rootfs demo stack test lint bench clean

system-packages:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(BIN)/shipyard: pyproject.toml
	@command -v uv >/dev/null 2>&1 || $(PY) -m pip install -q uv
	@[ -x $(BIN)/python ] || uv venv -q --python $(PY) $(VENV)
	uv pip install -q --python $(BIN)/python -e '.[dev,sandbox,postgres]' 'prefect==$(PREFECT_FLOOR)'
	@touch $(BIN)/shipyard

# The checkout under the names the wheel installs it at, for this venv's Python and for mypy:
# .venv/src/shipyard/{flows,tasks,blocks,deployments} -> the top-level folders, and the
# checkout-only packages `sandbox` and `bench` (not in the wheel), on sys.path by a .pth file.
links: $(BIN)/shipyard
	@mkdir -p $(VENV)/src/shipyard
	@for p in flows tasks blocks deployments; do ln -sfn $(CURDIR)/$$p $(VENV)/src/shipyard/$$p; done
	@for p in sandbox bench; do ln -sfn $(CURDIR)/$$p $(VENV)/src/$$p; done
	@echo $(CURDIR)/$(VENV)/src > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/shipyard-checkout.pth"

setup: system-packages $(BIN)/shipyard links

rootfs: setup
	@$(BIN)/python -m sandbox.engine.rootfs || echo "no base root filesystem: the sandbox runs in-process"

demo: rootfs
	$(BIN)/shipyard demo

# The local distributed stack: PostgreSQL (Debian's package, data kept in $SHIPYARD_HOME/stack),
# a Prefect server on it, 3 process workers; prints the PREFECT_API_URL to export.
# `shipyard stack status` / `shipyard stack down` (by PID). The demo keeps the embedded default.
stack: setup
	$(BIN)/shipyard stack up --database postgres --workers 3

# Three workers on two cores: most of the suite waits (runner processes, bakes, a browser, the
# container engine), so a third worker overlaps those waits; tests/runtime stays on one worker.
TEST_WORKERS ?= 3

test: rootfs
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder --durations=15

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b --json; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# `make test` with every core kept busy by bench/burn.py (2 spinning processes per CPU, for at
# most BURN_SECONDS): the suite must stay green on a loaded machine. The same pytest command as
# `test`; the burner is stopped afterwards whatever happens (tests failed, Ctrl-C, TERM), and the
# target exits with pytest's status.
BURN_SECONDS ?= 3600
.PHONY: test-under-load
test-under-load: rootfs
	@$(BIN)/python bench/burn.py --seconds $(BURN_SECONDS) --while-pid $$PPID & burner=$$!; \
	trap 'kill $$burner 2>/dev/null' EXIT INT TERM HUP; \
	start=$$(date +%s); \
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder --durations=15; status=$$?; \
	kill $$burner 2>/dev/null; wait $$burner; \
	echo "test-under-load: pytest exit $$status in $$(( $$(date +%s) - start )) s, under the burner"; \
	exit $$status
