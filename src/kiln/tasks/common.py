"""What every kiln task shares: settings from flags, and KilnError -> clear message + exit code."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke.exceptions import Exit

from kiln import console
from kiln.errors import KilnError
from kiln.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def settings_for(project_dir: Path | None = None, **flags: Any) -> Settings:
    """Settings for a task: defaults < pyproject < env < the task's flags (``None`` = not given)."""
    settings = load_settings(project_dir, **{k: v for k, v in flags.items() if v is not None})
    console.register_secret(settings.registry_password)
    return settings


def reports_errors(func: F) -> F:
    """Turn a :class:`KilnError` into its message on stderr and its exit code (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except KilnError as exc:
            console.error(str(exc))
            raise Exit(code=exc.exit_code) from None

    return wrapper  # type: ignore[return-value]
