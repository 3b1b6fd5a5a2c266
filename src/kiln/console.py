"""Output for people, for CI logs and for programs, with every known secret masked.

Three audiences, one module:

* **People at a terminal** (stderr is a TTY, not CI): coloured lines and rich progress
  (:func:`activity` shows a spinner while a push or copy runs; the mirror shows a progress bar).
* **CI logs** (``CI=true`` / ``GITLAB_CI=true``): plain lines, grouped in GitLab's collapsible
  sections (:func:`section`): ``\\e[0Ksection_start:<unix ts>:<name>[collapsed=true]\\r\\e[0K<header>``
  ... ``\\e[0Ksection_end:<unix ts>:<name>\\r\\e[0K``, one per image and stage.
* **Programs** (``--json``): one JSON document on stdout when the task ends — success or failure
  — with what was built, pushed, tagged or copied (image, tag, digest) and, in a dry run, the
  plan. Everything for people goes to stderr then, so stdout parses.

Every line goes through :func:`mask`, including the output of tools kiln relays (buildah,
skopeo, git): a value registered with :func:`register_secret` never reaches a terminal, a CI
log or a JSON document, and neither does anything shaped like a known token (``glpat-...``,
``ghp_...``, a JWT, a password in a URL ...; :mod:`kiln.secrets`) even if nobody registered it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from kiln.secrets import looks_like_credential_name, redact_tokens

_SECRETS: set[str] = set()
_LOCK = threading.RLock()
MASK = "[MASKED]"

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


# -- masking -----------------------------------------------------------------------------------

def register_secret(value: str | None) -> None:
    """Mask ``value`` in all later output (values shorter than 4 characters are ignored)."""
    if value and len(value) >= 4:
        with _LOCK:
            _SECRETS.add(value)
            # a value may reach output quoted or URL-encoded
            from urllib.parse import quote

            quoted = quote(value, safe="")
            if quoted != value:
                _SECRETS.add(quoted)


def register_env_secrets(env: Mapping[str, str]) -> None:
    """Mask the values of environment variables named like credentials (``CI_JOB_TOKEN``,
    ``CI_REGISTRY_PASSWORD``, ``GITLAB_JOB_DEPLOY_PRODUCTION_ACCESS_TOKEN``, ``NPM_TOKEN`` ...).

    Only values that could be a credential (8+ characters, one word, not a path or a boolean)
    are registered, so ``SECRET_DETECTION_DISABLED=true`` does not mask every "true". kiln's own
    settings variables are not credentials (``KILN_BUILD_SECRETS=id=npm,env=NPM_TOKEN`` names
    one), except ``KILN_REGISTRY_PASSWORD``.
    """
    for name, value in env.items():
        if name.startswith("KILN_") and name != "KILN_REGISTRY_PASSWORD":
            continue
        value = value.strip()
        if (len(value) >= 8 and not any(c.isspace() for c in value)
                and not value.startswith(("/", "./", "~")) and looks_like_credential_name(name)):
            register_secret(value)


def mask(text: str) -> str:
    """``text`` with every registered secret and every known token shape replaced."""
    with _LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return redact_tokens(text, MASK)


# -- modes -------------------------------------------------------------------------------------

def in_ci() -> bool:
    return os.environ.get("GITLAB_CI", "").lower() == "true" or os.environ.get("CI", "").lower() in {
        "true",
        "1",
    }


def mode() -> str:
    """``ci`` (plain lines + sections), ``tty`` (colours + live progress) or ``plain``."""
    if in_ci():
        return "ci"
    return "tty" if stderr.is_terminal else "plain"


def live() -> bool:
    """Whether live progress (spinners, bars) may be drawn: a terminal, not CI, not JSON."""
    return mode() == "tty" and not json_enabled()


# -- lines -------------------------------------------------------------------------------------

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


def plan(line: str) -> None:
    """One line of a dry run's plan: stdout for people, recorded for ``--json`` (where stdout
    carries only the JSON document and the line goes to stderr)."""
    summary().plan.append(mask(line))
    summary().used = True
    if json_enabled():
        info(line)
    else:
        out(line)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# -- GitLab collapsible sections -------------------------------------------------------------

_SECTION_NAME = re.compile(r"[^a-z0-9_.-]+")
_sections: list[str] = []


def section_name(text: str) -> str:
    """A valid GitLab section name (``[a-z0-9_.-]``) for ``text``: ``build app`` -> ``build_app``."""
    name = _SECTION_NAME.sub("_", text.lower()).strip("_")
    return name[:80] or "kiln"


def section_start_line(name: str, header: str, timestamp: int, *, collapsed: bool = True) -> str:
    """The raw line that opens a collapsible section (pure)."""
    options = "[collapsed=true]" if collapsed else ""
    return f"\x1b[0Ksection_start:{timestamp}:{name}{options}\r\x1b[0K{header}"


def section_end_line(name: str, timestamp: int) -> str:
    return f"\x1b[0Ksection_end:{timestamp}:{name}\r\x1b[0K"


@contextmanager
def section(key: str, header: str, *, collapsed: bool = True) -> Iterator[None]:
    """Group the lines printed inside: a collapsible section in GitLab CI, a header line
    elsewhere. ``key`` becomes the section name (unique per run: nested sections get their
    parent's name as prefix)."""
    header = mask(header)
    if mode() != "ci":
        step(header)
        yield
        return
    name = section_name(key)
    if _sections:
        name = f"{_sections[-1]}.{name}"[:120]
    _raw(section_start_line(name, f"kiln: {header}", int(time.time()), collapsed=collapsed))
    _sections.append(name)
    try:
        yield
    finally:
        _sections.pop()
        _raw(section_end_line(name, int(time.time())))


def _raw(line: str) -> None:
    stream = sys.stderr
    stream.write(line + "\n")
    stream.flush()


@contextmanager
def activity(text: str) -> Iterator[None]:
    """A long operation (a push, a copy): a spinner on a terminal; nothing elsewhere (the caller's
    own lines and sections say what happens). Lines printed meanwhile scroll above the spinner.
    """
    if not live():
        yield
        return
    with stderr.status(_escape(mask(text)), spinner="dots"):
        yield


# -- the --json summary ------------------------------------------------------------------------

@dataclass
class Summary:
    """What a task did, for ``--json``: one entry per image/tag touched, the dry-run plan."""

    task: str = ""
    dry_run: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    used: bool = False
    emitted: bool = False

    def record(self, action: str, *, image: str, tag: str | None = None,
               digest: str | None = None, **extra: Any) -> None:
        """``action``: built, pushed, tagged, removed, copied, skipped, planned, failed ..."""
        entry: dict[str, Any] = {"action": action, "image": image, "tag": tag, "digest": digest}
        entry.update(extra)
        with _LOCK:
            self.results.append(entry)
            self.used = True

    def document(self, *, ok: bool, exit_code: int = 0, error: BaseException | None = None
                 ) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "task": self.task,
            "ok": ok,
            "exit_code": exit_code,
            "dry_run": self.dry_run,
            "results": self.results,
        }
        if self.dry_run or self.plan:
            doc["plan"] = self.plan
        doc.update(self.extra)
        if error is not None:
            doc["error"] = {"type": type(error).__name__,
                            "message": str(getattr(error, "message", error)),
                            "hint": getattr(error, "hint", None)}
        return doc


_state: dict[str, Any] = {"summary": Summary(), "json": False}


def begin(task: str) -> Summary:
    """Start a task's summary (and forget the previous task's JSON mode)."""
    _state["summary"] = Summary(task=task)
    _state["json"] = False
    return summary()


def summary() -> Summary:
    result: Summary = _state["summary"]
    return result


def set_json(enabled: bool) -> None:
    _state["json"] = bool(enabled)


def json_enabled() -> bool:
    return bool(_state["json"])


def record(action: str, *, image: str, tag: str | None = None, digest: str | None = None,
           **extra: Any) -> None:
    """Record one thing the current task did (see :meth:`Summary.record`)."""
    summary().record(action, image=image, tag=tag, digest=digest, **extra)


def emit_json(document: Mapping[str, Any]) -> None:
    """The JSON document on stdout (masked), once per task."""
    summary().emitted = True
    out(json.dumps(document, indent=2, sort_keys=False))


def finish(*, ok: bool, exit_code: int = 0, error: BaseException | None = None) -> None:
    """End of a task: with ``--json``, print the summary — always on failure, and on success
    when the task recorded something (tasks that print their own document are left alone)."""
    current = summary()
    if not json_enabled() or current.emitted:
        return
    if ok and not current.used:
        return
    emit_json(current.document(ok=ok, exit_code=exit_code, error=error))
