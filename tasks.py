"""Invoke entry point: kiln's task collection (``invoke --list``). Other repos use the same line;
the second makes ``invoke``'s own parse errors (unknown task or flag) exit 2, as ``kiln``'s do."""

from kiln.cli import adopt_running_invoke
from kiln.tasks import namespace  # noqa: F401

adopt_running_invoke()
