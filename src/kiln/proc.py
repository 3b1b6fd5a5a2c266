"""Running host tools: one place that starts processes, masks secrets and explains failures.

:func:`run` waits for a tool, :func:`run_attached` gives it the terminal, :func:`start` leaves a
server running (the embedded ``docker-registry``). Every one finds the tool with :func:`which`
(a missing tool names its Debian package) and masks registered secrets in what it reports.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln import console
from kiln.errors import KilnError, ToolMissingError

# Debian package that provides each tool kiln drives (for "install it" hints).
PACKAGES = {
    "buildah": "buildah",
    "skopeo": "skopeo",
    "docker-registry": "docker-registry",
    "debootstrap": "debootstrap",
    "git": "git",
}


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def which(tool: str) -> str:
    """Absolute path of ``tool`` or a :class:`ToolMissingError` naming the package to install."""
    path = shutil.which(tool)
    if path is None:
        package = PACKAGES.get(tool, tool)
        raise ToolMissingError(f"{tool} not found on PATH", hint=f"apt-get install {package}")
    return path


def run(
    args: Sequence[str],
    *,
    error: type[KilnError] = KilnError,
    what: str | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    stream: bool = False,
    check: bool = True,
    tail_lines: int = 40,
) -> Result:
    """Run a tool. ``stream`` relays its output live (masked); failures raise ``error`` with the
    command, the exit code and the tail of its output."""
    argv = [which(args[0]), *args[1:]]
    if stream:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=None if env is None else dict(env),
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            errors="replace",
        )
        if input is not None and proc.stdin is not None:
            proc.stdin.write(input)
            proc.stdin.close()
        lines: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            console.info(line.rstrip("\n"))
        code = proc.wait()
        result = Result(tuple(args), code, "".join(lines), "")
    else:
        completed = subprocess.run(
            argv, capture_output=True, text=True, env=None if env is None else dict(env),
            input=input, errors="replace", stdin=None if input is not None else subprocess.DEVNULL,
        )
        result = Result(tuple(args), completed.returncode, completed.stdout, completed.stderr)
    if check and result.returncode != 0:
        output = (result.stdout + result.stderr).rstrip().splitlines()
        tail = "\n".join("    " + line for line in output[-tail_lines:])
        raise error(
            f"{what or args[0]} failed (exit {result.returncode}): {console.mask(' '.join(args))}"
            + (f"\n  last output:\n{console.mask(tail)}" if tail else "")
        )
    return result


def run_attached(args: Sequence[str], *, stdout_to_stderr: bool = False) -> int:
    """Run a tool attached to this terminal (stdin, stdout and stderr inherited, nothing
    captured or masked): for a program whose output is the user's, such as a container started
    by ``invoke run``. Returns its exit code. ``stdout_to_stderr`` keeps stdout free for a
    ``--json`` summary."""
    argv = [which(args[0]), *args[1:]]
    return subprocess.run(argv, check=False,
                          stdout=sys.stderr if stdout_to_stderr else None).returncode


class Background:
    """A long-running tool started by :func:`start`: its pid, whether it still runs, how it
    ended, and how to stop it."""

    def __init__(self, args: tuple[str, ...], popen: subprocess.Popen[bytes]) -> None:
        self.args = args
        self._popen = popen

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """Its exit code once it has ended (after :meth:`poll` or :meth:`stop`), else ``None``."""
        return self._popen.returncode

    def poll(self) -> int | None:
        """Its exit code if it has ended, ``None`` while it runs."""
        return self._popen.poll()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit code."""
        if self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
        return self._popen.returncode


def start(
    args: Sequence[str],
    *,
    log: Path,
    error: type[KilnError] = KilnError,
    what: str | None = None,
    env: Mapping[str, str] | None = None,
    detach: bool = False,
) -> Background:
    """Start a long-running tool (a server) and return at once. Its stdout and stderr are
    appended to ``log`` (the caller reads readiness and failures there); stdin is closed.
    ``detach`` puts it in a session of its own, so it outlives this process's terminal and
    process group. A missing tool is a :class:`ToolMissingError`; one that cannot be executed
    raises ``error`` with the (masked) command."""
    argv = [which(args[0]), *args[1:]]
    with log.open("ab") as out:
        try:
            popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=None if env is None else dict(env), start_new_session=detach,
            )
        except OSError as exc:
            raise error(f"{what or args[0]} could not be started: {exc.strerror or exc}: "
                        f"{console.mask(' '.join(args))}") from exc
    return Background(tuple(args), popen)
