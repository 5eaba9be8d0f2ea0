"""What the Prefect UI shows of Shipyard speaks of the product: block descriptions, field
descriptions, flow and task descriptions never cite field reports ("seed 003") or tracker
issues ("issue 5")."""

from __future__ import annotations

import importlib
import pkgutil
import re

from prefect.blocks.core import Block
from prefect.flows import Flow
from prefect.tasks import Task

import shipyard.blocks as blocks
import shipyard.flows as flows
import shipyard.tasks as tasks

INTERNAL = re.compile(r"\bseeds? ?\d{3}\b|\bissue #?\d+\b|\bseeds/", re.IGNORECASE)


def _members(package):
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if getattr(value, "__module__", None) == module.__name__ or isinstance(
                value, Flow | Task
            ):
                yield value


def test_ui_texts_speak_of_the_product():
    texts: dict[str, str] = {}
    for value in _members(blocks):
        if isinstance(value, type) and issubclass(value, Block) and value is not Block:
            texts[f"block {value.__name__}"] = str(value.get_description())
            texts[f"block {value.__name__} fields"] = str(value.model_json_schema())
    for value in [*_members(flows), *_members(tasks)]:
        if isinstance(value, Flow | Task):
            texts[f"{type(value).__name__} {value.name}"] = value.description or ""
    assert len([k for k in texts if k.startswith("block")]) >= 10  # five blocks were read
    assert any(k.startswith("Flow ") for k in texts) and any(k.startswith("Task ") for k in texts)

    internal = {where: INTERNAL.findall(text) for where, text in texts.items()}
    assert {where: found for where, found in internal.items() if found} == {}
