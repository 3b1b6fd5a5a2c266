"""GNU cpp, the reference kiln's preprocessor is compared with (tool tier only: it runs cpp).

buildah pipes build files through ``cpp -E -iquote <context> -traditional -undef -``; the tests
add ``-P -nostdinc`` (no line markers, no system include directories). Whether cpp may be
missing follows ``require_tool``: skipped on a workstation, a failure in CI (``CI`` set), so
the comparison cannot vanish from a pipeline. ``ci/setup-host.sh`` installs ``cpp``.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from conftest import require_tool, skip_or_fail

CPP_FLAGS = ("-E", "-P", "-traditional", "-undef", "-nostdinc")


def require_gnu_cpp() -> str:
    """The path of GNU cpp; skips (locally) or fails (in CI) when it is missing or not GNU."""
    cpp = require_tool("cpp", "cpp")
    problem = _probe(cpp)
    if problem:
        skip_or_fail(problem)
    return cpp


@functools.cache
def _probe(cpp: str) -> str:
    done = subprocess.run([cpp, *CPP_FLAGS, "-"], input="#define X y\nX // z\n",
                          capture_output=True, text=True, check=False)
    if done.returncode != 0 or done.stdout.strip() != "y // z":
        return f"{cpp} does not behave like GNU cpp -traditional: {done.stderr.strip()!r}"
    return ""


def gnu_cpp(source: str | Path, quote_dir: Path | None = None, include_dirs: Sequence[Path] = (),
            defines: Mapping[str, str] | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run GNU cpp on a file (``Path``) or on text (``str``, through stdin, as buildah does)."""
    argv = [require_gnu_cpp(), *CPP_FLAGS]
    if quote_dir is not None:
        argv += ["-iquote", str(quote_dir)]
    for directory in include_dirs:
        argv += ["-I", str(directory)]
    argv += [f"-D{name}={value}" for name, value in (defines or {}).items()]
    if isinstance(source, Path):
        return subprocess.run([*argv, str(source)], capture_output=True, text=True, check=False,
                              env=None if env is None else dict(env))
    return subprocess.run([*argv, "-"], input=source, capture_output=True, text=True, check=False,
                          env=None if env is None else dict(env))
