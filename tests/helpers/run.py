"""Run kiln's invoke tasks as a user would (a subprocess), with a clean, explicit environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
_DROP_PREFIXES = ("CI_", "KILN_", "IMAGE_", "GITLAB_", "REGISTRY_AUTH_FILE", "BUILDAH_",
                  "BASE_IMAGE_TAG")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without pipeline/kiln variables (the outer CI must not leak in), plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_DROP_PREFIXES) and k not in {"CI"}}
    src = str(REPO_ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def run_kiln(project: Path, *args: str, env: Mapping[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``invoke <args>`` with kiln's collection, in ``project`` (its settings, its .kiln)."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(REPO_ROOT), *args],
        cwd=project, env=clean_env(env), capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
