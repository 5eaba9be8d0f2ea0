"""The emulated BuildKit's own Dockerfile reader (sandbox/buildkit/dockerfile.py): the rules of
the Dockerfile reference, and the same stages as the pipeline's parser on the sample service."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.buildkit.build_state import StageState
from sandbox.buildkit.dockerfile import (
    DockerfileError,
    arg_declarations,
    expand,
    expand_words,
    key_values,
    parse_dockerfile,
)
from sandbox.buildkit.image_metadata import apply_metadata
from shipyard.tasks.dockerfile import parse_dockerfile as pipeline_parse

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "page-service" / "Dockerfile"


def test_the_sample_services_stages_read_as_the_pipeline_reads_them():
    text = EXAMPLE.read_text()
    ours, theirs = parse_dockerfile(text), pipeline_parse(text)

    assert ours.global_args == theirs.global_args == [("BASE_IMAGE", None)]
    assert [(s.name, s.base, s.line) for s in ours.stages] == [
        (s.name, s.base, s.line) for s in theirs.stages
    ]
    for mine, pipeline in zip(ours.stages, theirs.stages, strict=True):
        assert [(i.cmd, i.line, i.flags) for i in mine.instructions] == [
            (i.cmd, i.line, i.flags) for i in pipeline.instructions
        ]


def test_continuations_join_as_buildkit_joins_them():
    dockerfile = parse_dockerfile(
        "FROM base AS Build\n"
        "RUN apt-get update \\\n"
        "    # a comment inside the continuation is dropped\n"
        "\n"
        " && apt-get install -y curl\n"
        "copy --from=build /a /b\n"
    )
    stage = dockerfile.stages[0]
    run, copy = stage.instructions

    assert stage.name == "build" and dockerfile.stage("BUILD") is stage
    assert (run.line, run.args) == (2, "apt-get update  && apt-get install -y curl")
    assert (copy.cmd, copy.flags, copy.text) == (
        "COPY",
        {"from": "build"},
        "COPY --from=build /a /b",
    )


def test_directives_are_read_only_at_the_top():
    with pytest.raises(DockerfileError, match="line 2: the sandbox supports only the default"):
        parse_dockerfile("# syntax=docker/dockerfile:1\n# escape=`\nFROM base\n")
    # after a comment, `# escape=` is a comment like any other (the reference, "Parser directives")
    assert parse_dockerfile("# the base\n# escape=`\nFROM base\n").stages[0].base == "base"


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ("FROM base AS x\nRUNN echo typo\n", "line 2: unknown instruction: RUNN"),
        ("FROM base\nRUN <<EOF\necho hi\nEOF\n", "line 2: heredocs"),
        ("FROM base\nONBUILD RUN make\n", "line 2: ONBUILD is not supported"),
        ("FROM base\nCOPY --form=x a b\n", "line 2: unknown flag: --form"),
        ("RUN make\nFROM base\n", "line 1: no build stage in current context"),
        ("FROM base AS 1st\n", "invalid name for build stage"),
        ("FROM a AS x\nFROM b AS X\n", "duplicate stage name"),
        ("# only a comment\n", "no FROM instruction"),
    ],
)
def test_what_buildkit_refuses_is_refused_with_its_line(text, refusal):
    with pytest.raises(DockerfileError, match=refusal):
        parse_dockerfile(text)


def test_environment_replacement_follows_the_reference():
    env = {"NAME": "app", "EMPTY": ""}

    assert expand("/srv/${NAME}/$NAME", env) == "/srv/app/app"
    assert [expand(f"${{{v}:-d}}", env) for v in ("NAME", "EMPTY", "UNSET")] == ["app", "d", "d"]
    assert [expand(f"${{{v}-d}}", env) for v in ("NAME", "EMPTY", "UNSET")] == ["app", "", "d"]
    assert [expand(f"${{{v}:+x}}", env) for v in ("NAME", "EMPTY", "UNSET")] == ["x", "", ""]
    assert [expand(f"${{{v}+x}}", env) for v in ("NAME", "EMPTY", "UNSET")] == ["x", "x", ""]
    assert expand(r"\$NAME", env) == "$NAME"
    assert expand("'$NAME'", env) == "$NAME"  # single quotes keep text literal
    assert expand_words('"my $NAME" ./dest', env) == ["my app", "./dest"]


def test_env_and_label_pairs_keep_their_values_as_written_until_expanded():
    assert key_values('A="x y" B=$A', "ENV", 3) == [("A", '"x y"'), ("B", "$A")]
    assert key_values("PATH /usr/local/bin:$PATH", "ENV", 3) == [("PATH", "/usr/local/bin:$PATH")]
    with pytest.raises(DockerfileError, match="line 3: ENV names can not be blank"):
        key_values("A=1 B", "ENV", 3)
    assert arg_declarations('A B=1 C="two words"') == [
        ("A", None),
        ("B", "1"),
        ("C", '"two words"'),
    ]


def test_env_values_see_the_environment_from_before_the_instruction():
    dockerfile = parse_dockerfile(
        "FROM base\n"
        "ENV abc=hello\n"
        "ENV abc=bye def=$abc\n"
        'LABEL "title"="page ${abc}" quoted=\'$abc\'\n'
        "EXPOSE ${PORT:-8080}\n"
    )
    state = StageState(dockerfile.stages[0], "sha256:0", {}, [], {}, {}, [])
    for ins in dockerfile.stages[0].instructions:
        apply_metadata(state, ins, dict(state.env))

    assert state.env == {"abc": "bye", "def": "hello"}  # the reference's own example
    assert state.config["Labels"] == {"title": "page bye", "quoted": "$abc"}
    assert state.config["ExposedPorts"] == {"8080/tcp": {}}
