"""``kiln`` command: kiln's invoke tasks without a ``tasks.py`` (``kiln build --image backend``)."""

from __future__ import annotations

from invoke.program import Program

from kiln import __version__
from kiln.tasks import namespace

program = Program(namespace=namespace, version=__version__, name="kiln", binary="kiln")


def main() -> None:
    program.run()
