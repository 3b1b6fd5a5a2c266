"""The documented guidelines for build files (docs/workflow.md), checked as lint warnings.

Two rules the documentation gives and nothing else enforces, because a build that breaks them
still works, only worse:

* a service image (one that installs an application: ``#include "python-requirements"``)
  derives from our base (``#include "setup-from-base"``); a service FROM an upstream image
  misses what base sets up (CA bundle, users, the Python environment) and its updates;
* ``#include "cleanup"`` is the last include: blocks after it leave caches that nothing removes.

Pure text checks of the build file as written (before preprocessing), so the line numbers are
the user's. Used by the ``lint`` nox session; warnings never fail it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kiln.containerfile import parse_from_lines

SERVICE_BLOCK = "python-requirements"
BASE_BLOCK = "setup-from-base"
CLEANUP_BLOCK = "cleanup"
# FROM images that are ours: kiln's build args for our registry and the base's registry.
OUR_PREFIXES = ("${REGISTRY}/", "$REGISTRY/", "${BASE_REGISTRY}/", "$BASE_REGISTRY/")

_INCLUDE = re.compile(r'^\s*#\s*include\s+["<]([^">]+)[">]')


@dataclass(frozen=True)
class Finding:
    """One guideline a build file does not follow: where, and what to do."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message} (docs/workflow.md)"


def check_build_file(text: str, source: str) -> list[Finding]:
    """The guideline findings of one build file's text (``source`` names it in messages)."""
    includes: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        included = _INCLUDE.match(line)
        if included:
            includes.append((number, Path(included.group(1)).name))
    # FROM lines as the one Containerfile reader sees them (the #include lines are comments
    # to it); an earlier stage is not an image, variables stay as written
    froms = [(found.line, found.written) for found in parse_from_lines(text, {}, keep_unset=True)
             if found.stage is None]
    names = [name for _, name in includes]
    findings: list[Finding] = []
    if SERVICE_BLOCK in names and BASE_BLOCK not in names:
        for number, image in froms:
            if not image.startswith(OUR_PREFIXES):
                findings.append(Finding(
                    source, number,
                    f"a service image (it includes {SERVICE_BLOCK}) builds FROM {image}, an "
                    f"upstream image, instead of our base: use #include \"{BASE_BLOCK}\" "
                    "(base-registry names another project's base)"))
    cleanups = [number for number, name in includes if name == CLEANUP_BLOCK]
    if cleanups and includes[-1][1] != CLEANUP_BLOCK:
        last_number, last_name = includes[-1]
        findings.append(Finding(
            source, cleanups[-1],
            f"#include \"{CLEANUP_BLOCK}\" is not the last include (\"{last_name}\" at line "
            f"{last_number} comes after it, and what it leaves is not cleaned): move cleanup "
            "to the end"))
    return findings


def check_build_files(paths: Iterable[Path], root: Path | None = None) -> list[Finding]:
    """The findings of several build files, named relative to ``root`` when given."""
    findings: list[Finding] = []
    for path in paths:
        name = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) \
            else str(path)
        findings.extend(check_build_file(path.read_text(encoding="utf-8"), name))
    return findings


__all__ = ["Finding", "check_build_file", "check_build_files"]
