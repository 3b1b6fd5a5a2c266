"""The one decorator every kiln task uses: :func:`kiln_task`.

It wraps invoke's ``@task`` so that every task has ``--dry-run`` and ``--json``, the help of a
flag that is a setting comes from the setting's declaration (:data:`kiln.settings.OPTIONS`),
the flags are resolved into :class:`~kiln.settings.Settings` (defaults < pyproject < environment
< flags) before the task body runs, and failures end the same way everywhere.

Exit codes (:mod:`kiln.errors`): 2 bad input/config, 3 registry auth, 4 transient registry
failure (worth a retry), 5 build failure, 6 tool missing; 1 is an unexpected error (a bug, or
an environment problem kiln does not recognise: the message says which exception), 130 an
interrupt. With ``--json`` a failure still prints one JSON document on stdout (``ok: false``,
the exit code and the error) after whatever the task recorded before failing.
"""

from __future__ import annotations

import base64
import inspect
import os
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from invoke.exceptions import Exit, Failure, ParseError, UnexpectedExit
from invoke.tasks import Task, task

from kiln import console
from kiln.errors import KilnError
from kiln.settings import OPTION, OPTIONS, Option, Settings, load_settings

# Task flag name -> the setting it sets (``json`` -> ``json_output``).
FLAG_OPTIONS: Mapping[str, Option] = {option.flag_name: option for option in OPTIONS}
# Every task has these two (added at the end when a task does not place them itself).
ALWAYS = ("dry_run", "json")
# Task name -> its flags' help, as given to invoke (which consumes its copy when it parses).
FLAG_HELP: dict[str, Mapping[str, str]] = {}
# Task name -> the flags that are the task's own parameters (not settings), even when one
# shares a setting's name (graph's --image selects what to show; it is not IMAGE_NAME).
OWN_FLAGS: dict[str, frozenset[str]] = {}

TaskBody = Callable[..., None]


def settings_for(project_dir: Path | None = None, **flags: Any) -> Settings:
    """Settings for a task: defaults < pyproject < env < the task's flags (``None`` = not given).

    Registers the secrets the run knows of (credential-named environment variables, the registry
    password and the Basic credentials kiln writes into auth files) before anything is printed.
    """
    console.register_env_secrets(os.environ)
    # --json must take effect even when the settings themselves are invalid: read its
    # declared variables (KILN_JSON_OUTPUT) ahead of the settings
    if flags.get("json_output") or any(
            os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
            for name in OPTION["json_output"].env_names):
        console.set_json(True)
    settings = load_settings(project_dir, **{k: v for k, v in flags.items() if v is not None})
    console.register_secret(settings.registry_password)
    if settings.registry_user and settings.registry_password:
        # what auth files kiln writes for buildah/skopeo contain (in case a tool echoes it)
        raw = f"{settings.registry_user}:{settings.registry_password}".encode()
        console.register_secret(base64.b64encode(raw).decode())
    console.set_json(settings.json_output)
    console.set_dry_run(settings.dry_run)
    return settings


def setting_flag(option: Option, value: Any) -> Any:
    """A task flag's value as a settings flag: ``None`` when not given, so the environment and
    ``[tool.kiln]`` apply. A boolean flag is "given" when it differs from its default (off, or
    on for ``--[no-]deps``-style flags)."""
    if option.kind != "bool":
        return value
    if option.negatable:
        return None if value else False
    return True if value else None


def kiln_task(*, flags: Sequence[str] = (), help: Mapping[str, str] | None = None,  # noqa: A002
              **task_options: Any) -> Callable[[TaskBody], Task[Any]]:
    """Make ``body(c, settings, **own)`` an invoke task.

    ``flags`` are the task's flags in order (the order gives invoke's short flags): names of
    settings (their flag names: ``image``, ``registry``, ``json`` ...) and of ``body``'s own
    keyword parameters (``mr``, ``config`` ...); ``dry_run`` and ``json`` are added when
    missing. ``help`` overrides a setting's help for this task and must cover ``body``'s own
    parameters. ``task_options`` go to invoke's ``@task`` (``iterable=`` ...).
    """
    def decorate(body: TaskBody) -> Task[Any]:
        name = body.__name__.replace("_", "-")
        params = list(inspect.signature(body).parameters.values())
        if [p.name for p in params[:2]] != ["c", "settings"]:
            raise TypeError(f"task {name}: the body takes (c, settings, ...)")
        own = {p.name: p for p in params[2:]}
        order = [*flags, *(f for f in ALWAYS if f not in flags)]
        unknown = [f for f in order if f not in own and f not in FLAG_OPTIONS]
        missing = [p for p in own if p not in order]
        if unknown or missing or len(set(order)) != len(order):
            raise TypeError(f"task {name}: flags {unknown} are neither settings nor parameters; "
                            f"parameters {missing} are not in flags (or a flag repeats)")
        overrides = dict(help or {})
        helps: dict[str, str] = {}
        signature: list[inspect.Parameter] = [params[0]]
        for flag in order:
            if flag in own:
                signature.append(own[flag])
                if flag not in overrides:
                    raise TypeError(f"task {name}: no help for its own flag {flag!r}")
                helps[flag] = overrides[flag]
                continue
            option = FLAG_OPTIONS[flag]
            default = option.negatable if option.kind == "bool" else None
            signature.append(inspect.Parameter(flag, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                               default=default))
            helps[flag] = option.task_help(overrides.get(flag))

        def run(c: Any, **given: Any) -> None:
            def call() -> None:
                settings = settings_for(**{
                    FLAG_OPTIONS[flag].name: setting_flag(FLAG_OPTIONS[flag], value)
                    for flag, value in given.items() if flag not in own})
                body(c, settings, **{k: v for k, v in given.items() if k in own})

            run_reported(name, call)

        run.__name__ = body.__name__
        run.__qualname__ = body.__qualname__
        run.__doc__ = body.__doc__
        run.__module__ = body.__module__
        run.__signature__ = inspect.Signature(signature)  # type: ignore[attr-defined]
        FLAG_HELP[name] = dict(helps)
        OWN_FLAGS[name] = frozenset(own)
        made: Task[Any] = task(help=helps, **task_options)(run)
        return made

    return decorate


def run_reported(name: str, call: Callable[[], None]) -> None:
    """Run a task's work: a :class:`KilnError` becomes its (masked) message on stderr and its
    exit code, anything unexpected a one-line message and exit 1 (traceback with
    ``KILN_DEBUG=1``); with ``--json`` the summary document is printed either way."""
    console.begin(name)
    try:
        call()
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
