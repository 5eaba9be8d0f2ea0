"""How the release flow's parameters show in the Prefect UI's run form, and what callers may pass.

The form is drawn from the flow's parameter schema (`prefect.utilities.callables.
parameter_schema`): a union (`ReleaseTarget | str`, `str | None`) is drawn as a choice of types,
and `None` shows "Property is type 'None'" until clicked. So each parameter is one plain string in
the schema, while a Python caller (tests, the CLI, the webhook's trigger) may still pass a
`ReleaseTarget` block object for `target` and `None` for `image` / `commit` (read as empty).
"""

from __future__ import annotations

from typing import Annotated, Any, get_type_hints

from pydantic import BeforeValidator, WithJsonSchema

from shipyard.blocks.release_target import ReleaseTarget


def _none_is_empty(value: Any) -> Any:
    # A trigger templating a null commit, or a caller passing None: both mean "not given".
    return "" if value is None else value


# A block name in the form; a block object from Python.
TargetParam = Annotated[ReleaseTarget | str, WithJsonSchema({"type": "string"})]
# A plain optional string: "" means not given.
OptionalText = Annotated[str, BeforeValidator(_none_is_empty)]


def resolve_annotations(flow: Any) -> Any:
    """Turn the flow function's string annotations into the types they name, once, at import.

    A runner (`shipyard serve`, `flow.serve`) ships a flow from a checkout to its run's process
    by value (cloudpickle), with only the globals the function's body uses: there, Prefect's
    parameter validation could not resolve `TargetParam` from a string annotation
    (`from __future__ import annotations`) and every served run failed before it started.
    """
    flow.fn.__annotations__ = get_type_hints(flow.fn, include_extras=True)
    return flow
