"""The release's run form in the Prefect UI: each parameter one plain type with a description,
drawn from the flow's parameter schema exactly as Prefect builds it for a deployment."""

from __future__ import annotations

from prefect.utilities.callables import parameter_schema

from shipyard.blocks.release_target import ReleaseTarget
from shipyard.flows.release.flow import release


def test_target_image_commit_are_plain_strings_with_descriptions():
    schema = parameter_schema(release).model_dump()
    properties = schema["properties"]
    for name in ("target", "image", "commit", "tagged_at"):
        prop = properties[name]
        assert prop["type"] == "string", (name, prop)
        assert not {"anyOf", "oneOf", "allOf", "$ref"} & set(prop), (name, prop)
        assert prop.get("description"), (name, prop)
    assert properties["target"]["default"] == "default"
    assert properties["image"]["default"] == "" and properties["commit"]["default"] == ""
    assert all(p.get("description") for p in properties.values()), properties
    assert schema["required"] == ["git_tag"]
    assert not schema["definitions"], "no block model leaks into the run form"


def test_python_callers_may_still_pass_a_block_and_none():
    block = ReleaseTarget(service="form-check")
    params = release.validate_parameters(
        {"git_tag": "v1.0.0", "target": block, "image": None, "commit": None}
    )
    assert params["target"] is block or params["target"].service == "form-check"
    assert params["image"] == "" and params["commit"] == ""
    named = release.validate_parameters({"git_tag": "v1.0.0", "target": "default"})
    assert named["target"] == "default"
