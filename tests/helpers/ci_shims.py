"""Recording shims for the CI tests: a fake ``invoke``/``nox`` first on PATH writes one JSON line
per call (argv, the nox session it ran in, the image/pipeline variables) and then either answers
for itself or runs the real tool. Used by test_noxfile, test_gitlab_ci_local and test_parity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The variables that decide what a task does: recorded with every call.
WATCHED = (
    "IMAGE_NAME", "IMAGE_ARCH", "IMAGE_ARCHES", "BASE_IMAGE_TAG", "CHANGES", "KILN_DRY_RUN",
    "CI_PIPELINE_ID", "CI_COMMIT_BRANCH", "CI_COMMIT_TAG", "CI_MERGE_REQUEST_IID",
)

_SHIM = '''#!{python}
import json, os, sys
tool = {tool!r}
watched = {watched!r}
entry = {{
    "tool": tool,
    "argv": sys.argv[1:],
    "session": os.environ.get("NOX_CURRENT_SESSION"),
    "job": os.environ.get("CI_JOB_NAME"),
    "env": {{k: os.environ.get(k) for k in watched}},
}}
with open(os.environ["KILN_SHIM_RECORD"], "a", encoding="utf-8") as f:
    f.write(json.dumps(entry) + "\\n")
answers = json.loads(os.environ.get("KILN_SHIM_ANSWERS", "{{}}")).get(tool, {{}})
key = " ".join(sys.argv[1:])
for prefix, answer in answers.items():
    if key == prefix or key.startswith(prefix + " "):
        sys.stdout.write(answer.get("stdout", ""))
        sys.exit(answer.get("rc", 0))
real = {real!r}
if real:
    os.execv(real, [real, *sys.argv[1:]])
sys.exit(int(os.environ.get("KILN_SHIM_RC", "0")))
'''


@dataclass
class Shims:
    """A folder of shims and the file they record to."""

    bin_dir: Path
    record: Path

    def env(self, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["KILN_SHIM_RECORD"] = str(self.record)
        env.update(extra)
        return env

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        entries = [json.loads(line) for line in self.record.read_text().splitlines() if line]
        return [e for e in entries if tool is None or e["tool"] == tool]

    def clear(self) -> None:
        self.record.unlink(missing_ok=True)


def make_shims(directory: Path, *, fake: tuple[str, ...] = (), passthrough: tuple[str, ...] = ()
               ) -> Shims:
    """Shims for ``fake`` tools (record, answer canned output, exit KILN_SHIM_RC) and
    ``passthrough`` tools (record, then exec the real one found on PATH now)."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in (*fake, *passthrough):
        real = ""
        if tool in passthrough:
            found = shutil.which(tool)
            assert found, f"{tool} must be installed for this test"
            real = found
        path = bin_dir / tool
        path.write_text(_SHIM.format(python=sys.executable, tool=tool, watched=WATCHED, real=real))
        path.chmod(0o755)
    return Shims(bin_dir, directory / "calls.jsonl")


# --- a throwaway copy of this repository that gitlab-ci-local can run ------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_ORIGIN = "https://gitlab.example.com/kiln-test/kiln.git"
CHANGE_MARK = "/* changed by kiln's CI tests: this image's CHANGES rule matches */\n"
_SKIP = {".git", ".kiln", ".nox", ".gitlab-ci-local", "__pycache__", ".mypy_cache",
         ".ruff_cache", ".pytest_cache", ".venv"}
_SKIP_AT_TOP = {"build", "dist"}  # packaging output; src/kiln/build is a package of kiln's


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)


def make_test_repo(dest: Path, changed: str = "builds/busybox.in") -> Path:
    """Copy this repository into a git repo whose fake ``origin/main`` lacks one change to
    ``changed``: gitlab-ci-local's rules:changes (``git diff origin/main``) then select only the
    jobs of that image, as GitLab would for a push touching only that file."""
    shutil.copytree(
        REPO_ROOT, dest,
        ignore=lambda d, names: [
            n for n in names if n in _SKIP or n.endswith(".egg-info")
            or (n in _SKIP_AT_TOP and Path(d) == REPO_ROOT)],
    )
    _git(dest, "init", "-q", "-b", "main")
    _git(dest, "config", "user.email", "ci-test@example.com")
    _git(dest, "config", "user.name", "kiln CI test")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "state of origin/main")
    _git(dest, "remote", "add", "origin", FAKE_ORIGIN)
    _git(dest, "update-ref", "refs/remotes/origin/main", "HEAD")
    _git(dest, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/main")
    target = dest / changed
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("a", encoding="utf-8") as f:
        f.write(CHANGE_MARK)
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", f"change {changed}")
    return dest


@dataclass(frozen=True)
class PipelineKind:
    """The CI variables of one kind of GitLab pipeline, as gitlab-ci-local needs them."""

    name: str
    variables: tuple[tuple[str, str], ...] = ()
    unset: tuple[str, ...] = ()


DEFAULT_BRANCH = PipelineKind("default-branch")
MERGE_REQUEST = PipelineKind(
    "merge-request",
    (("CI_PIPELINE_SOURCE", "merge_request_event"), ("CI_MERGE_REQUEST_IID", "7"),
     ("CI_MERGE_REQUEST_SOURCE_BRANCH_NAME", "feature"),
     ("CI_MERGE_REQUEST_TARGET_BRANCH_NAME", "main"), ("CI_COMMIT_REF_NAME", "feature")),
    ("CI_COMMIT_BRANCH",),
)
TAG = PipelineKind(
    "tag", (("CI_COMMIT_TAG", "v1.0.0"), ("CI_COMMIT_REF_NAME", "v1.0.0")), ("CI_COMMIT_BRANCH",)
)


def gitlab_ci_local(
    repo: Path, kind: PipelineKind, pipeline_id: str, variables: dict[str, str], *,
    env: dict[str, str], jobs: tuple[str, ...] = (), manual: tuple[str, ...] = (),
    concurrency: int | None = None, timeout: int = 900,
) -> subprocess.CompletedProcess[str]:
    """Run gitlab-ci-local (shell executor) on ``repo`` for one pipeline."""
    all_vars = {"CI_PIPELINE_ID": pipeline_id, **dict(kind.variables), **variables}
    argv = ["gitlab-ci-local", "--force-shell-executor", "--no-color", "--max-job-name-padding", "0"]
    for name, value in all_vars.items():
        argv += ["--variable", f"{name}={value}"]
    for name in kind.unset:
        argv += ["--unset-variable", name]
    for job in manual:
        argv += ["--manual", job]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    argv += list(jobs)
    run_env = dict(env)
    run_env["GCL_IGNORE_PREDEFINED_VARS"] = ",".join(sorted(all_vars))
    return subprocess.run(argv, cwd=repo, env=run_env, capture_output=True, text=True,
                          timeout=timeout)


def scrubbed_env(repo: Path, shims: Shims | None = None) -> dict[str, str]:
    """The environment for gitlab-ci-local: nothing of an outer pipeline or of kiln's settings
    leaks in (jobs inherit this environment); kiln imported from the repo copy."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("CI_", "GITLAB_", "KILN_", "IMAGE_", "NOX", "PYTEST_", "GCL_"))
        and k not in {"CI", "BASE_IMAGE_TAG", "buildah_image_tag", "BUILDAH_IMAGE_TAG",
                      "REGISTRY_AUTH_FILE", "CHANGES"}
    }
    env["PYTHONPATH"] = str(repo / "src")
    if shims is not None:
        env = shims.env(env)
    return env


def passed_jobs(output: str) -> list[str]:
    """Job names gitlab-ci-local reports as PASS in its summary."""
    import re

    return re.findall(r"^\s*PASS\s+(.+?)\s*$", output, re.M)


def failed_jobs(output: str) -> list[str]:
    import re

    return re.findall(r"^\s*FAIL\s+(.+?)\s*$", output, re.M)


# -- shared by the pipeline tests (kiln's own, the consumer repositories, the image graph) -----

WORKFLOW_DOC = REPO_ROOT / "docs" / "workflow.md"


def documented_block(heading: str) -> str:
    """The first indented code block under ``## <heading>`` of docs/workflow.md (the job
    patterns users copy), so the tests use exactly what the documentation shows."""
    text = WORKFLOW_DOC.read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1]
    block: list[str] = []
    for line in section.splitlines()[1:]:
        if line.startswith("    ") or (block and not line.strip()):
            block.append(line[4:])
        elif block:
            break
    return "\n".join(block).strip() + "\n"


def ensure_binfmt(arch: str) -> None:
    """qemu's binfmt handler for ``arch`` is registered (registers it as root; otherwise skips
    on a laptop and fails in CI)."""
    from conftest import skip_or_fail
    from kiln import qemu
    from kiln.errors import KilnError

    try:
        qemu.check_binfmt(arch)
    except KilnError as exc:
        if os.geteuid() != 0:
            skip_or_fail(f"qemu binfmt for {arch} not registered and not root: {exc}")
        qemu.register_binfmt([arch])
        qemu.check_binfmt(arch)


def seed_busybox(repo: Path, registry: str, storage: dict[str, Path]) -> str:
    """Offline stand-in for Docker Hub: busybox:latest (amd64 + arm64) under <registry>/mirror;
    returns that upstream prefix."""
    from kiln import seed
    from kiln.settings import load_settings

    settings = load_settings(repo, env={
        "KILN_STORAGE_ROOT": str(storage["root"]),
        "KILN_STORAGE_RUNROOT": str(storage["runroot"]),
        "KILN_STATE_DIR": str(repo.parent / "state"),
        "PATH": os.environ.get("PATH", ""),
    })
    seed.seed_upstream(settings, registry, names=["library/busybox:latest"])
    return f"{registry}/mirror"
