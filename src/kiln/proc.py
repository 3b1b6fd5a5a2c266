"""Running host tools: one place that starts processes, masks secrets and explains failures."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
