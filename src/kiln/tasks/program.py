"""Command-line parse errors are bad input: exit 2 with a clear message (invoke's exits 1).

:class:`KilnProgram` is the ``kiln`` command's program (:mod:`kiln.cli`). ``invoke`` /
``python -m invoke`` load a ``tasks.py`` before they parse the task flags, so importing kiln's
collection (:mod:`kiln.tasks`) gives invoke's running program the same handling
(:func:`adopt_running_invoke`): an unknown task or flag exits 2 with either command.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from invoke.exceptions import Exit, ParseError
from invoke.program import Program

from kiln.errors import InputError

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
            require_list_values(list(self.core.unparsed), self.tasks)
        except ParseError as exc:
            raise usage_error(exc, self.usage_binary()) from None


def require_list_values(argv: list[str], tasks: Any) -> None:
    """invoke lets a repeatable flag (``--image`` of build) end the line or precede another
    flag with no value, giving an empty list; like any other flag it needs a value."""
    contexts = {context.name: context for context in tasks}
    current = None
    for index, token in enumerate(argv):
        if token in contexts:
            current = contexts[token]
            continue
        name = token.split("=", 1)[0]
        if current is None or not name.startswith("-") or "=" in token:
            continue
        arg = current.flags[name] if name in current.flags else None  # aliases: -i
        following = argv[index + 1] if index + 1 < len(argv) else None
        if arg is not None and arg.kind is list and (following is None
                                                     or following.startswith("-")):
            raise ParseError(f"Flag {arg!r} needed value and was not given one!")


def adopt_running_invoke() -> None:
    """Give the running ``invoke`` / ``python -m invoke`` program kiln's parse-error handling.

    Only invoke's own, unmodified program object is adopted (its methods are looked up when
    called, so the task parsing that follows the collection loading uses kiln's); any other
    program, or none (kiln used as a library), is left alone.
    """
    main = sys.modules.get("invoke.main")
    running = getattr(main, "program", None)
    if running is not None and type(running) is Program:
        running.__class__ = KilnProgram
