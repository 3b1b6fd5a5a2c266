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

The state of a run (output mode, ``--json``, open sections, the summary, the registered secrets)
lives in one :class:`Console` object, as cibuildwheel's Logger does; :func:`current` is the active
one and the module-level functions (``console.info``, ``console.record`` ...) delegate to it, so
callers never touch the state itself. Tests start from a fresh one with :func:`reset`.

Every line goes through :func:`mask`, including the output of tools kiln relays (buildah,
skopeo, git): a value registered with :func:`register_secret` never reaches a terminal, a CI
log or a JSON document, and neither does anything shaped like a known token (``glpat-...``,
``ghp_...``, a JWT, a password in a URL ...; :mod:`kiln.redact`) even if nobody registered it.
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
from urllib.parse import quote

from rich.console import Console as RichConsole
from rich.markup import escape as _escape

from kiln import ci_context
from kiln.redact import looks_like_credential_name, redact_tokens

MASK = "[MASKED]"

# people's lines: stderr, so stdout stays clean for data (resolved at print time, as capsys needs)
stderr = RichConsole(stderr=True, highlight=False, soft_wrap=True)

_SECTION_NAME = re.compile(r"[^a-z0-9_.-]+")


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
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def record(self, action: str, *, image: str, tag: str | None = None,
               digest: str | None = None, **extra: Any) -> None:
        """``action``: built, pushed, tagged, removed, copied, skipped, planned, failed ..."""
        entry: dict[str, Any] = {"action": action, "image": image, "tag": tag, "digest": digest}
        entry.update(extra)
        with self._lock:
            self.results.append(entry)
            self.used = True

    def mark_used(self) -> None:
        """The task produced a result worth a ``--json`` document even if it recorded nothing
        (an empty list of images, no tags for this pipeline)."""
        self.used = True

    def add_plan(self, line: str) -> None:
        with self._lock:
            self.plan.append(line)
            self.used = True

    def set_extra(self, key: str, value: Any) -> None:
        """A top-level member of the ``--json`` document besides ``results`` and ``plan``."""
        with self._lock:
            self.extra[key] = value

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


# -- the console -------------------------------------------------------------------------------

class Console:
    """The output state of one run: JSON mode, open CI sections, the summary, known secrets.

    ``env`` decides the mode (``None``: the process environment at each call, so a test's
    ``monkeypatch.setenv("CI", ...)`` applies); ``stream`` is the rich console for people.
    """

    def __init__(self, *, env: Mapping[str, str] | None = None,
                 stream: RichConsole | None = None) -> None:
        self.env = env
        self.stream = stream if stream is not None else stderr
        self.json = False
        self.summary = Summary()
        self.sections: list[str] = []
        self.secrets: set[str] = set()
        self._lock = threading.RLock()

    # -- a task's life ----------------------------------------------------------------------
    def begin(self, task: str) -> Summary:
        """Start a task's summary (and forget the previous task's JSON mode); secrets stay."""
        self.summary = Summary(task=task)
        self.json = False
        return self.summary

    def set_json(self, enabled: bool) -> None:
        self.json = bool(enabled)

    def set_dry_run(self, enabled: bool) -> None:
        """The current task only plans (the ``--json`` document says so)."""
        self.summary.dry_run = bool(enabled)

    # -- masking ----------------------------------------------------------------------------
    def register_secret(self, value: str | None) -> None:
        """Mask ``value`` in all later output (values shorter than 4 characters are ignored)."""
        if value and len(value) >= 4:
            value = str(value)
            with self._lock:
                self.secrets.add(value)
                # a value may reach output quoted or URL-encoded
                quoted = quote(value, safe="")
                if quoted != value:
                    self.secrets.add(quoted)

    def register_env_secrets(self, env: Mapping[str, str]) -> None:
        """See :func:`register_env_secrets`."""
        for name, value in env.items():
            if name.startswith("KILN_") and name != "KILN_REGISTRY_PASSWORD":
                continue
            value = value.strip()
            if (len(value) >= 8 and not any(c.isspace() for c in value)
                    and not value.startswith(("/", "./", "~"))
                    and looks_like_credential_name(name)):
                self.register_secret(value)

    def mask(self, text: str) -> str:
        """``text`` with every registered secret and every known token shape replaced."""
        with self._lock:
            secrets = sorted(self.secrets, key=len, reverse=True)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return redact_tokens(text, MASK)

    # -- modes ------------------------------------------------------------------------------
    def mode(self) -> str:
        """``ci`` (plain lines + sections), ``tty`` (colours + live progress) or ``plain``."""
        if ci_context.in_ci(os.environ if self.env is None else self.env):
            return "ci"
        return "tty" if self.stream.is_terminal else "plain"

    def live(self) -> bool:
        """Whether live progress (spinners, bars) may be drawn: a terminal, not CI, not JSON."""
        return self.mode() == "tty" and not self.json

    # -- lines ------------------------------------------------------------------------------
    def info(self, message: str) -> None:
        self.stream.print(self.mask(message), markup=False)

    def step(self, message: str) -> None:
        self.stream.print(f"[bold cyan]kiln[/]: {_escape(self.mask(message))}")

    def warn(self, message: str) -> None:
        self.stream.print(f"[yellow]warning[/]: {_escape(self.mask(message))}")

    def error(self, message: str) -> None:
        self.stream.print(f"[bold red]error[/]: {_escape(self.mask(message))}")

    def out(self, text: str) -> None:
        sys.stdout.write(self.mask(text))
        if not text.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()

    def plan(self, line: str) -> None:
        self.summary.add_plan(self.mask(line))
        if self.json:
            self.info(line)
        else:
            self.out(line)

    # -- GitLab collapsible sections ---------------------------------------------------------
    @contextmanager
    def section(self, key: str, header: str, *, collapsed: bool = True) -> Iterator[None]:
        header = self.mask(header)
        if self.mode() != "ci":
            self.step(header)
            yield
            return
        name = section_name(key)
        if self.sections:
            name = f"{self.sections[-1]}.{name}"[:120]
        _raw(section_start_line(name, f"kiln: {header}", int(time.time()), collapsed=collapsed))
        self.sections.append(name)
        try:
            yield
        finally:
            self.sections.pop()
            _raw(section_end_line(name, int(time.time())))

    @contextmanager
    def activity(self, text: str) -> Iterator[None]:
        if not self.live():
            yield
            return
        with self.stream.status(_escape(self.mask(text)), spinner="dots"):
            yield

    # -- the --json document ----------------------------------------------------------------
    def emit_json(self, document: Mapping[str, Any]) -> None:
        self.summary.emitted = True
        self.out(json.dumps(document, indent=2, sort_keys=False))

    def finish(self, *, ok: bool, exit_code: int = 0, error: BaseException | None = None
               ) -> None:
        current = self.summary
        if not self.json or current.emitted:
            return
        if ok and not current.used:
            return
        self.emit_json(current.document(ok=ok, exit_code=exit_code, error=error))


_active = Console()


def current() -> Console:
    """The active console (the module-level functions below use it)."""
    return _active


def reset(console: Console | None = None) -> Console:
    """Make ``console`` (default: a fresh one) the active console; for tests and embedders."""
    global _active
    _active = console if console is not None else Console()
    return _active


# -- masking -----------------------------------------------------------------------------------

def register_secret(value: str | None) -> None:
    """Mask ``value`` in all later output (values shorter than 4 characters are ignored)."""
    _active.register_secret(value)


def register_env_secrets(env: Mapping[str, str]) -> None:
    """Mask the values of environment variables named like credentials (``CI_JOB_TOKEN``,
    ``CI_REGISTRY_PASSWORD``, ``GITLAB_JOB_DEPLOY_PRODUCTION_ACCESS_TOKEN``, ``NPM_TOKEN`` ...).

    Only values that could be a credential (8+ characters, one word, not a path or a boolean)
    are registered, so ``SECRET_DETECTION_DISABLED=true`` does not mask every "true". kiln's own
    settings variables are not credentials (``KILN_BUILD_SECRETS=id=npm,env=NPM_TOKEN`` names
    one), except ``KILN_REGISTRY_PASSWORD``.
    """
    _active.register_env_secrets(env)


def mask(text: str) -> str:
    """``text`` with every registered secret and every known token shape replaced."""
    return _active.mask(text)


# -- modes -------------------------------------------------------------------------------------

def mode() -> str:
    """``ci`` (plain lines + sections), ``tty`` (colours + live progress) or ``plain``."""
    return _active.mode()


def live() -> bool:
    """Whether live progress (spinners, bars) may be drawn: a terminal, not CI, not JSON."""
    return _active.live()


# -- lines -------------------------------------------------------------------------------------

def info(message: str) -> None:
    """A progress line for people (stderr, so stdout stays clean for data)."""
    _active.info(message)


def step(message: str) -> None:
    """A named step of a task."""
    _active.step(message)


def warn(message: str) -> None:
    _active.warn(message)


def error(message: str) -> None:
    _active.error(message)


def out(text: str) -> None:
    """Data on stdout (a Containerfile, a plan, JSON); masked too."""
    _active.out(text)


def plan(line: str) -> None:
    """One line of a dry run's plan: stdout for people, recorded for ``--json`` (where stdout
    carries only the JSON document and the line goes to stderr)."""
    _active.plan(line)


# -- GitLab collapsible sections -------------------------------------------------------------

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
    with _active.section(key, header, collapsed=collapsed):
        yield


def _raw(line: str) -> None:
    stream = sys.stderr
    stream.write(line + "\n")
    stream.flush()


@contextmanager
def activity(text: str) -> Iterator[None]:
    """A long operation (a push, a copy): a spinner on a terminal; nothing elsewhere (the caller's
    own lines and sections say what happens). Lines printed meanwhile scroll above the spinner.
    """
    with _active.activity(text):
        yield


# -- the --json summary ------------------------------------------------------------------------

def begin(task: str) -> Summary:
    """Start a task's summary (and forget the previous task's JSON mode)."""
    return _active.begin(task)


def summary() -> Summary:
    """The current task's summary (call its methods: ``summary().mark_used()``)."""
    return _active.summary


def set_json(enabled: bool) -> None:
    _active.set_json(enabled)


def set_dry_run(enabled: bool) -> None:
    _active.set_dry_run(enabled)


def json_enabled() -> bool:
    return _active.json


def record(action: str, *, image: str, tag: str | None = None, digest: str | None = None,
           **extra: Any) -> None:
    """Record one thing the current task did (see :meth:`Summary.record`)."""
    _active.summary.record(action, image=image, tag=tag, digest=digest, **extra)


def emit_json(document: Mapping[str, Any]) -> None:
    """The JSON document on stdout (masked), once per task."""
    _active.emit_json(document)


def finish(*, ok: bool, exit_code: int = 0, error: BaseException | None = None) -> None:
    """End of a task: with ``--json``, print the summary — always on failure, and on success
    when the task recorded something (tasks that print their own document are left alone)."""
    _active.finish(ok=ok, exit_code=exit_code, error=error)
