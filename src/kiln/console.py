"""Output for people and for CI logs, with every known secret masked.

Every line kiln prints goes through :func:`mask`, including the output of tools it relays
(buildah, skopeo), so a credential registered with :func:`register_secret` never reaches a
terminal or a CI log.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

_SECRETS: set[str] = set()
MASK = "[MASKED]"

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


def register_secret(value: str | None) -> None:
    """Mask ``value`` in all later output (values shorter than 4 characters are ignored)."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def mask(text: str) -> str:
    """``text`` with every registered secret replaced by ``[MASKED]``."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def in_ci() -> bool:
    return os.environ.get("GITLAB_CI", "").lower() == "true" or os.environ.get("CI", "").lower() in {
        "true",
        "1",
    }


def info(message: str) -> None:
    """A progress line for people (stderr, so stdout stays clean for data)."""
    stderr.print(mask(message), markup=False)


def step(message: str) -> None:
    """A named step of a task."""
    stderr.print(f"[bold cyan]kiln[/]: {_escape(mask(message))}")


def warn(message: str) -> None:
    stderr.print(f"[yellow]warning[/]: {_escape(mask(message))}")


def error(message: str) -> None:
    stderr.print(f"[bold red]error[/]: {_escape(mask(message))}")


def out(text: str) -> None:
    """Data on stdout (a Containerfile, a plan, JSON); masked too."""
    sys.stdout.write(mask(text))
    if not text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
