"""``kiln`` command: kiln's invoke tasks without a ``tasks.py`` (``kiln build --image backend``).

A command line kiln cannot parse (an unknown task or flag, a missing flag value) is bad input:
exit 2 with a clear message, like every other bad input (:mod:`kiln.tasks.program`).
"""

from __future__ import annotations

from kiln import __version__
from kiln.tasks import namespace
from kiln.tasks.program import KilnProgram

program = KilnProgram(namespace=namespace, version=__version__, name="kiln", binary="kiln",
                      binary_names=["kiln"])


def main() -> None:
    program.run()
