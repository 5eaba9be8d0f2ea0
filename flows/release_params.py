"""How the release flow's parameters show in the Prefect UI's run form, and what callers may pass.

The form is drawn from the flow's parameter schema (`prefect.utilities.callables.
parameter_schema`): a union (`ReleaseTarget | str`, `str | None`) is drawn as a choice of types,
and `None` shows "Property is type 'None'" until clicked. So each parameter is one plain string in
the schema, while a Python caller (tests, the CLI, the webhook's trigger) may still pass a
`ReleaseTarget` block object for `target` and `None` for `image` / `commit` (read as empty).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

from blocks.release_target import ReleaseTarget


def _none_is_empty(value: Any) -> Any:
    # A trigger templating a null commit, or a caller passing None: both mean "not given".
    return "" if value is None else value


# A block name in the form; a block object from Python.
TargetParam = Annotated[ReleaseTarget | str, WithJsonSchema({"type": "string"})]
# A plain optional string: "" means not given.
OptionalText = Annotated[str, BeforeValidator(_none_is_empty)]
