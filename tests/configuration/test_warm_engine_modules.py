"""The warm engine (deployments/stack/warm_engine.py) imports every flow module prefect.yaml
deploys before it forks a run: a deployment whose module is missing from `FLOW_MODULES` would
still run, but import its flow in every forked child (the cost the engine exists to save), and a
module listed that no deployment uses is imported for nothing. Read from the file, as `prefect
deploy` reads it (nothing is imported here)."""

from __future__ import annotations

from pathlib import Path

import yaml

from shipyard.deployments.stack.warm_engine import FLOW_MODULES

PREFECT_YAML = Path(__file__).resolve().parents[2] / "prefect.yaml"


def test_every_prefect_yaml_entrypoint_module_is_preloaded_by_the_warm_engine():
    deployments = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    entrypoints = {d["name"]: d["entrypoint"] for d in deployments}
    assert entrypoints, f"no deployments in {PREFECT_YAML}"
    # Module paths (module.path.function), as prefect.yaml's header says: no file:function.
    assert all(":" not in e and e.startswith("shipyard.") for e in entrypoints.values()), (
        entrypoints
    )
    modules = {e.rsplit(".", 1)[0] for e in entrypoints.values()}
    missing = {n: e for n, e in entrypoints.items() if e.rsplit(".", 1)[0] not in FLOW_MODULES}
    assert not missing, (
        "prefect.yaml deploys flows whose modules the warm engine does not preload: "
        + ", ".join(f"{n} -> {e}" for n, e in sorted(missing.items()))
        + ": add each module to FLOW_MODULES in deployments/stack/warm_engine.py"
    )
    extra = sorted(set(FLOW_MODULES) - modules)
    assert not extra, (
        f"FLOW_MODULES in deployments/stack/warm_engine.py lists {extra}, which no deployment "
        "in prefect.yaml uses: remove them (each is imported by the engine for nothing)"
    )
    assert len(FLOW_MODULES) == len(set(FLOW_MODULES)), FLOW_MODULES
