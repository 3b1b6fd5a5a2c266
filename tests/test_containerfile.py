"""The one Containerfile reader (kiln.containerfile): Docker's rules for comments, continuations,
heredocs, variables and FROM, and the three consumers (build's FROM lines, the reference lint,
the credential check) reading a file the same way. Pure: no process, no network."""

from __future__ import annotations

import pytest

from kiln import credentials
from kiln.buildah import failing_step
from kiln.containerfile import (
    Heredoc,
    instructions,
    locate_step,
    logical_lines,
    parse_from_lines,
    substitute,
)
from kiln.errors import InputError
from kiln.mirror.lint import from_uses

CONTAINERFILE = """\
ARG REGISTRY=docker.io
ARG BASE_IMAGE_TAG=latest
ARG UNUSED
FROM --platform=linux/amd64 ${REGISTRY}/python:${BASE_IMAGE_TAG} AS builder
ARG STAGE_ONLY=nope
RUN cat <<EOF > /x
FROM not/an-instruction:inside-heredoc
EOF
FROM \\
    $REGISTRY/base:${BASE_IMAGE_TAG:-fallback}
COPY --from=builder /x /x
FROM builder
"""


# -- instructions --------------------------------------------------------------------------------

def test_logical_lines_join_continuations_and_skip_heredocs() -> None:
    lines = logical_lines(CONTAINERFILE)
    numbers = [n for n, _ in lines]
    texts = [" ".join(t.split()) for _, t in lines]
    assert "FROM not/an-instruction:inside-heredoc" not in texts
    assert (9, "FROM $REGISTRY/base:${BASE_IMAGE_TAG:-fallback}") in zip(numbers, texts,
                                                                          strict=True)
    assert numbers == sorted(numbers)
    with_bodies = dict(logical_lines(CONTAINERFILE, heredoc_bodies=True))
    assert with_bodies[6] == "RUN cat <<EOF > /x\nFROM not/an-instruction:inside-heredoc"


def test_continuation_is_joined_as_docker_joins_it() -> None:
    (run,) = instructions("RUN apt-get update \\\n    && apt-get install -y curl\n")
    assert (run.keyword, run.arguments) == ("RUN", "apt-get update     && apt-get install -y curl")
    assert (run.line, run.end_line) == (1, 2)


def test_comment_inside_a_continuation_is_dropped_and_the_continuation_goes_on() -> None:
    text = ("RUN make \\\n"
            "# a note about the next flag\n"
            "    # an indented note\n"
            "    --jobs=2 \\\n"
            "\n"
            "    all\n"
            "ENV A=1\n")
    run, env = instructions(text)
    assert " ".join(run.text.split()) == "RUN make --jobs=2 all"
    assert "note" not in run.text
    assert (run.line, run.end_line, env.line) == (1, 6, 7)


def test_comments_blank_lines_and_a_final_escape() -> None:
    text = "# syntax=docker/dockerfile:1\n\n  # indented comment\nfrom scratch\nRUN a \\"
    first, last = instructions(text)
    assert (first.keyword, first.text, first.line) == ("FROM", "from scratch", 4)
    assert (last.keyword, last.arguments, last.end_line) == ("RUN", "a", 5)


def test_escape_directive_switches_the_continuation_character() -> None:
    text = "# escape=`\nFROM scratch\nRUN dir c:\\ `\n    /w\n"
    _, run = instructions(text)
    assert " ".join(run.arguments.split()) == "dir c:\\ /w"
    with pytest.raises(InputError, match="line 1: invalid escape directive"):
        instructions("# escape=x\nFROM scratch\n")
    # not at the top: an ordinary comment
    (_, run) = instructions("FROM scratch\n# escape=`\nRUN a \\\n b\n")
    assert " ".join(run.arguments.split()) == "a b"


def test_heredocs_several_per_line_dash_and_quoted() -> None:
    text = ('RUN cat <<-"A" <<B > /x\n'
            "\tbody of A ${X}\n"
            "\tA\n"
            "body of B\n"
            "B\n"
            "COPY <<EOF /etc/conf\n"
            "FROM inside\n"
            " EOF\n"
            "EOF\n"
            "ENV AFTER=1\n")
    run, copy, env = instructions(text)
    assert run.heredocs == (Heredoc("A", 2, "\tbody of A ${X}\n", strip_tabs=True, expand=False),
                            Heredoc("B", 4, "body of B\n"))
    assert copy.heredocs == (Heredoc("EOF", 7, "FROM inside\n EOF\n"),)  # " EOF" does not end it
    assert (copy.end_line, env.line) == (9, 10)


def test_heredocs_only_for_run_copy_add_and_unterminated_ones_run_to_the_end() -> None:
    assert [i.keyword for i in instructions("LABEL x=<<EOF\nFROM y\nEOF\n")] == [
        "LABEL", "FROM", "EOF"]
    (run,) = instructions("RUN cat <<EOF\nFROM y\n")
    assert run.heredocs[0].body == "FROM y\n"
    assert [i.keyword for i in instructions("RUN echo '<<EOF'\nFROM y\n")] == ["RUN", "FROM"]


# -- variables -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("expr", "expected"), [
    ("${SET:-d}", "v"), ("${EMPTY:-d}", "d"), ("${UNSET:-d}", "d"),
    ("${SET-d}", "v"), ("${EMPTY-d}", ""), ("${UNSET-d}", "d"),
    ("${SET:+a}", "a"), ("${EMPTY:+a}", ""), ("${UNSET:+a}", ""),
    ("$SET/${SET}", "v/v"), ("$UNSET.x", ".x"), ("\\$SET", "$SET"),
])
def test_substitute(expr: str, expected: str) -> None:
    assert substitute(expr, {"SET": "v", "EMPTY": ""}) == expected


def test_substitute_can_keep_names_and_unset_variables_as_written() -> None:
    values = {"BASE": "debian", "UPSTREAM_REGISTRY": "docker.io"}
    text = "${UPSTREAM_REGISTRY}/library/${BASE}:$TAG${SUFFIX:-}"
    assert substitute(text, values, keep={"UPSTREAM_REGISTRY"}, keep_unset=True) == \
        "${UPSTREAM_REGISTRY}/library/debian:$TAG"


# -- FROM ----------------------------------------------------------------------------------------

def test_parse_from_lines_substitutes_global_args() -> None:
    froms = parse_from_lines(CONTAINERFILE, {"REGISTRY": "r.example/g", "OTHER": "x"})
    assert [f.image for f in froms] == ["r.example/g/python:latest", "r.example/g/base:latest",
                                        "builder"]
    assert froms[0].alias == "builder" and froms[0].line == 4
    assert froms[0].platform == "linux/amd64"
    assert froms[0].written == "${REGISTRY}/python:${BASE_IMAGE_TAG}"
    assert froms[1].line == 9
    assert [f.is_image for f in froms] == [True, True, False]
    assert froms[2].stage == "builder"


def test_build_args_only_apply_to_declared_args() -> None:
    text = "ARG A=default\nFROM $A/$B:x\n"
    assert parse_from_lines(text, {"A": "given", "B": "undeclared"})[0].image == "given/:x"


def test_args_after_the_first_from_are_not_global() -> None:
    text = "FROM a\nARG X=1\nFROM img:${X}\n"
    assert parse_from_lines(text, {})[1].image == "img:"


def test_arg_defaults_use_earlier_args_and_quotes() -> None:
    text = 'ARG R="reg.example/g"\nARG IMG=${R}/base\nARG NODEFAULT\nFROM ${IMG}:${NODEFAULT-1}\n'
    assert parse_from_lines(text, {})[0].image == "reg.example/g/base:1"


def test_stage_references_are_case_insensitive_and_scratch_is_no_image() -> None:
    froms = parse_from_lines("FROM a AS Build\nFROM build\nFROM BUILD AS other\nFROM scratch\n"
                             "FROM other\n", {})
    assert [f.stage for f in froms] == [None, "build", "build", None, "other"]
    assert [f.is_image for f in froms] == [True, False, False, False, False]


# -- where a failed step is ---------------------------------------------------------------------

BUILDAH_FAILURE = """\
STEP 1/4: FROM 127.0.0.1:46241/mirror/library/busybox:latest
STEP 2/4: RUN echo before &&     echo "this step fails" >&2 &&     false
this step fails
subprocess exited with status 1
Error: building at STEP "RUN echo before &&     echo "this step fails" >&2 &&     false": exit status 1
"""


def test_failing_step_is_found_in_the_containerfile() -> None:
    text = ("ARG R\nFROM $R/busybox\nRUN echo before && \\\n    echo \"this step fails\" >&2 "
            "&& \\\n    false\nRUN echo never\n")
    step_text = failing_step(BUILDAH_FAILURE)
    assert step_text == 'RUN echo before &&     echo "this step fails" >&2 &&     false'
    assert locate_step(text, step_text) == 3
    assert locate_step("FROM x\nRUN a \\\n# note\n  && b\nRUN c\n", "RUN a   && b") == 2
    assert locate_step(text, "RUN not there") is None
    assert failing_step("STEP 1/2: FROM x\nSTEP 2/2: COPY a b\nError: boom\n") == "COPY a b"
    assert failing_step("nothing") is None


# -- the three consumers agree --------------------------------------------------------------------

GLPAT = "glpat-" + "Ab1_" * 5  # a fake token with a real shape

HEREDOC_FROM = f"""\
FROM quay.io/acme/base:1
COPY <<EOF /notes
FROM evil/img
token {GLPAT}
EOF
"""

COMMENTED_CONTINUATION = """\
FROM \\
# the base image, pinned
    quay.io/acme/base:1
ENV A=1 \\
# a note
    DB_PASSWORD=hunter22
"""


def test_a_from_inside_a_heredoc_is_text_for_build_and_lint_but_checked_for_credentials() -> None:
    assert [f.image for f in parse_from_lines(HEREDOC_FROM, {})] == ["quay.io/acme/base:1"]
    assert [u.resolved for u in from_uses(HEREDOC_FROM, "f")] == ["quay.io/acme/base:1"]
    (finding,) = credentials.check_containerfile(HEREDOC_FROM, "C")
    assert (finding.where, finding.reason) == ("C:2 COPY", "contains a GitLab token")


def test_a_comment_inside_a_continuation_is_dropped_by_every_consumer() -> None:
    (from_line,) = parse_from_lines(COMMENTED_CONTINUATION, {})
    assert (from_line.line, from_line.image) == (1, "quay.io/acme/base:1")
    assert [(u.line, u.resolved) for u in from_uses(COMMENTED_CONTINUATION, "f")] == [
        (1, "quay.io/acme/base:1")]
    (finding,) = credentials.check_containerfile(COMMENTED_CONTINUATION, "C")
    assert (finding.where, finding.name) == ("C:4 ENV", "DB_PASSWORD")
