"""The documented build-file guidelines as lint warnings (kiln.guidelines, issue #11)."""

from __future__ import annotations

from pathlib import Path

from kiln import guidelines

DOCUMENTED = """\
#include "setup-from-base"
/* any steps here that should happen before pip install */
#include "python-requirements"
/* any steps here that should happen after pip install */
#include "cleanup"
"""


def test_the_documented_build_file_follows_them() -> None:
    assert guidelines.check_build_file(DOCUMENTED, "builds/app.in") == []


def test_a_service_from_an_upstream_image_is_reported_at_its_from_line() -> None:
    text = ('ARG UPSTREAM_REGISTRY\nFROM ${UPSTREAM_REGISTRY}/library/python:3.11 AS build\n'
            "FROM build\n#include \"python-requirements\"\n#include \"cleanup\"\n")
    [finding] = guidelines.check_build_file(text, "builds/app.in")
    assert (finding.file, finding.line) == ("builds/app.in", 2)
    assert "instead of our base" in finding.message and "setup-from-base" in finding.message
    assert str(finding).startswith("builds/app.in:2: a service image")


def test_a_service_from_our_registry_or_a_base_image_from_upstream_is_fine() -> None:
    ours = 'FROM ${REGISTRY}/python:latest\n#include "python-requirements"\n#include "cleanup"\n'
    base = 'FROM ${UPSTREAM_REGISTRY}/library/debian:bookworm\nRUN true\n#include "cleanup"\n'
    assert guidelines.check_build_file(ours, "a.in") == []
    assert guidelines.check_build_file(base, "b.in") == []


def test_cleanup_not_last_is_reported_at_the_cleanup_line() -> None:
    text = DOCUMENTED.replace('#include "cleanup"\n', "") \
        .replace('#include "python-requirements"\n', '#include "cleanup"\n#include "python-requirements"\n')
    [finding] = guidelines.check_build_file(text, "builds/app.in")
    assert finding.line == 3
    assert '"python-requirements" at line 4 comes after it' in finding.message


def test_files_are_named_relative_to_the_project(tmp_path: Path) -> None:
    (tmp_path / "builds").mkdir()
    (tmp_path / "builds" / "x.in").write_text('#include "cleanup"\n#include "step"\n')
    [finding] = guidelines.check_build_files([tmp_path / "builds" / "x.in"], tmp_path)
    assert finding.file == "builds/x.in"
