"""What every kiln task shares: settings from flags, and failures -> clear message + exit code.

Exit codes (:mod:`kiln.errors`): 2 bad input/config, 3 registry auth, 4 transient registry
failure (worth a retry), 5 build failure, 6 tool missing; 1 is an unexpected error (a bug, or
an environment problem kiln does not recognise: the message says which exception), 130 an
interrupt. With ``--json`` a failure still prints one JSON document on stdout (``ok: false``,
the exit code and the error) after whatever the task recorded before failing.
"""

from __future__ import annotations

import base64
import functools
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke.exceptions import Exit, Failure, ParseError, UnexpectedExit

from kiln import console
from kiln.errors import KilnError
from kiln.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

# Help texts shared by every task that has the flag.
DRY_RUN_HELP = "print the plan (files, exact tool commands, registry operations); change nothing"
JSON_HELP = ("print a machine-readable JSON summary on stdout (what was built/pushed/tagged: "
             "image, tag, digest; ok / exit code / error); messages go to stderr")


def settings_for(project_dir: Path | None = None, **flags: Any) -> Settings:
    """Settings for a task: defaults < pyproject < env < the task's flags (``None`` = not given)."""
    console.register_env_secrets(os.environ)
    # --json must take effect even when the settings themselves are invalid
    if flags.get("json_output") or os.environ.get("KILN_JSON_OUTPUT", "").lower() in {
            "1", "true", "yes", "on"}:
        console.set_json(True)
    settings = load_settings(project_dir, **{k: v for k, v in flags.items() if v is not None})
    console.register_secret(settings.registry_password)
    if settings.registry_user and settings.registry_password:
        # what auth files kiln writes for buildah/skopeo contain (in case a tool echoes it)
        raw = f"{settings.registry_user}:{settings.registry_password}".encode()
        console.register_secret(base64.b64encode(raw).decode())
    console.set_json(settings.json_output)
    console.summary().dry_run = settings.dry_run
    return settings


def flag(value: bool) -> bool | None:
    """A boolean task flag that defaults to off: ``True`` when given, else ``None`` (not given,
    so the environment and ``[tool.kiln]`` apply)."""
    return True if value else None


def reports_errors(func: F) -> F:
    """Run a task: a :class:`KilnError` becomes its (masked) message on stderr and its exit code,
    anything unexpected a one-line message and exit 1 (traceback with ``KILN_DEBUG=1``); with
    ``--json`` the summary document is printed either way."""
    name = func.__name__.replace("_", "-")

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        console.begin(name)
        try:
            result = func(*args, **kwargs)
        except KilnError as exc:
            console.error(str(exc))
            console.finish(ok=False, exit_code=exc.exit_code, error=exc)
            raise Exit(code=exc.exit_code) from None
        except (Exit, ParseError, UnexpectedExit, Failure):
            raise
        except KeyboardInterrupt:
            console.error(f"{name}: interrupted")
            console.finish(ok=False, exit_code=130)
            raise Exit(code=130) from None
        except Exception as exc:  # noqa: BLE001 - a bug must still end with a masked message
            if os.environ.get("KILN_DEBUG"):
                console.info(traceback.format_exc())
            console.error(f"{name}: unexpected {type(exc).__name__}: {exc}\n  hint: this is "
                          "probably a kiln bug; rerun with KILN_DEBUG=1 for the traceback and "
                          "report it")
            console.finish(ok=False, exit_code=1, error=exc)
            raise Exit(code=1) from None
        console.finish(ok=True)
        return result

    return wrapper  # type: ignore[return-value]
