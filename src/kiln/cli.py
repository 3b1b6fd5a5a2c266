"""``kiln`` command: kiln's invoke tasks without a ``tasks.py`` (``kiln build --image backend``).

A command line kiln cannot parse (an unknown task or flag, a missing flag value) is bad input:
exit 2 with a clear message, like every other bad input (docs/architecture.md), where invoke's
own program exits 1. ``invoke`` itself gets the same behaviour when a ``tasks.py`` calls
:func:`adopt_running_invoke` (this repository's does).
"""

from __future__ import annotations

import re
import sys
from typing import Any

from invoke.exceptions import Exit, ParseError
from invoke.program import Program

from kiln import __version__
from kiln.errors import InputError
from kiln.tasks import namespace

USAGE_EXIT_CODE = InputError.exit_code


_NEEDS_VALUE = re.compile(r"^Flag <Argument: ([\w-]+)[^>]*> needed value and was not given one!$")


def usage_error(exc: ParseError, binary: str) -> Exit:
    """The :class:`Exit` for a command line that does not parse: message, hint, exit 2."""
    message = str(exc)
    needs_value = _NEEDS_VALUE.match(message)
    if needs_value:
        message = f"--{needs_value[1].replace('_', '-')} needs a value"
    return Exit(f"error: {message}\n  hint: '{binary} --list' shows the tasks, "
                f"'{binary} --help <task>' a task's flags", code=USAGE_EXIT_CODE)


class KilnProgram(Program):
    """invoke's :class:`Program` whose command-line parse errors exit 2 (bad input), not 1."""

    def usage_binary(self) -> str:
        """The command as the user typed it, for the hint (``kiln`` or ``invoke``)."""
        called = str(getattr(self, "called_as", "") or "")
        return called if called in {"kiln", "invoke", "inv"} else "invoke"

    def parse_core(self, argv: Any) -> None:
        try:
            super().parse_core(argv)
        except ParseError as exc:
            raise usage_error(exc, self.usage_binary()) from None

    def parse_tasks(self) -> None:
        try:
            super().parse_tasks()
        except ParseError as exc:
            raise usage_error(exc, self.usage_binary()) from None


program = KilnProgram(namespace=namespace, version=__version__, name="kiln", binary="kiln",
                      binary_names=["kiln"])


def adopt_running_invoke() -> None:
    """Give the running ``invoke`` / ``python -m invoke`` program kiln's parse-error handling.

    ``invoke`` loads ``tasks.py`` (collection parsing) before it parses the task flags, so a
    ``tasks.py`` that calls this makes an unknown task or flag exit 2 as with ``kiln``. Only
    invoke's own, unmodified program object is adopted; anything else is left alone.
    """
    main = sys.modules.get("invoke.main")
    running = getattr(main, "program", None)
    if running is not None and type(running) is Program:
        running.__class__ = KilnProgram


def main() -> None:
    program.run()
