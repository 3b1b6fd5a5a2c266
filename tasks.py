"""Invoke entry point: kiln's task collection (``invoke --list``). Other repos use the same line."""

from kiln.tasks import namespace  # noqa: F401
