"""Bad input, table-driven: malformed build files, configuration, environment values and hostile
input, each through a real ``python -m invoke <task>`` process in a project of its own.

Every row must end with its exit code (2: bad input/config) and a message that names what is
wrong (file:line, the value, the setting) — and the real registry every row could reach must
see no write at all (its access log has no PUT/POST/PATCH/DELETE anywhere), the registry
password never shows and no traceback either.

The rows run concurrently (independent processes, each in its own folder and with its own
repository prefix ``<registry>/<row id>`` holding ``app:p-7`` and ``app:p-7-amd64``, so a write
can be traced to its row); each row is then its own test case.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import require_tool
from helpers.images import push_test_image
from helpers.run import run_kiln
from kiln.local_registry import RegistryServer
from kiln.registry import media
from kiln.registry.client import RegistryClient

pytestmark = pytest.mark.real

PASSWORD = "bad-input-registry-pw-0"
GLPAT = "glpat-" + "Zy9_" * 5
AKIA = "AKIA" + "QRSTUVWXYZ234567"

APP_IN = """\
/* the application image */
ARG REGISTRY=localhost
FROM ${REGISTRY}/base:p-7
#include "step"
"""
MIRRORS = "images:\n  - {registry}/library/alpha:1\n"


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    expect: tuple[str, ...]  # each must appear in stderr
    code: int = 2
    env: Mapping[str, str | None] = field(default_factory=dict)
    files: Mapping[str, str | None] = field(default_factory=dict)  # None: delete
    links: Mapping[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()  # must appear nowhere in the output


def build_file(body: str) -> dict[str, str | None]:
    return {"builds/app.in": body}


CASES = [
    # -- the command line (invoke's own parse errors: exit 2 like all bad input) -----------------
    Case("unknown-flag", ("build", "--bogus"), ("No idea what '--bogus' is", "--help <task>")),
    Case("unknown-task", ("bild",), ("No idea what 'bild' is", "--list")),
    Case("flag-without-value", ("build", "--image"), ("--image needs a value",)),
    # -- build files -------------------------------------------------------------------------
    Case("include-missing", ("build",), ("builds/app.in:2", '#include "nope": file not found',
                                         "searched", "/includes"),
         files=build_file("FROM scratch\n#include \"nope\"\n")),
    Case("include-cycle", ("build",), ("cycle", "includes/a"),
         files={**build_file("FROM scratch\n#include \"a\"\n"),
                "includes/a": "#include \"b\"\n", "includes/b": "#include \"a\"\n"}),
    Case("unterminated-comment", ("build",), ("builds/app.in:2", "unterminated comment"),
         files=build_file("FROM scratch\n/* never closed\nRUN true\n")),
    Case("unterminated-if", ("build",), ("builds/app.in", "#if"),
         files=build_file("FROM scratch\n#ifdef X\nRUN true\n")),
    Case("include-etc-passwd", ("build",), ("builds/app.in:2", "absolute paths are not allowed"),
         files=build_file("FROM scratch\n#include \"/etc/passwd\"\n")),
    Case("include-dotdot", ("build",), ("builds/app.in:2", "outside"),
         files=build_file("FROM scratch\n#include \"../../../../etc/passwd\"\n")),
    Case("include-symlink-out", ("build",), ("builds/app.in:2", "/etc/passwd"),
         files=build_file("FROM scratch\n#include \"evil\"\n"),
         links={"includes/evil": "/etc/passwd"}),
    Case("shell-comment-strict", ("build", "--strict"), ("builds/app.in:2",),
         files=build_file("FROM scratch\n# a shell comment\nRUN true\n")),
    Case("glob-swallows-strict", ("build", "--strict"), ("builds/app.in:2", "comment"),
         files=build_file("FROM scratch\nRUN rm -rf /var/lib/apt/lists/*\nRUN true\n"
                          "RUN echo done */\n")),
    Case("define-hazard-strict", ("build", "--strict"), ("builds/app.in", "STAGE"),
         files=build_file("#define STAGE final\nFROM scratch\nARG STAGE\nRUN echo ${STAGE}\n")),
    # -- image names and hostile input ---------------------------------------------------------
    Case("image-traversal", ("build", "--image", "../x"), ("invalid image name '../x'",)),
    Case("image-deep-traversal", ("preprocess", "--image", "app/../../etc/passwd"),
         ("invalid image name",)),
    Case("image-uppercase", ("build", "--image", "App"), ("invalid image name 'App'",)),
    Case("image-empty", ("build",), ("no image given", "--image"), env={"IMAGE_NAME": ""}),
    Case("image-unknown", ("build", "--image", "nope"), ("unknown image 'nope'", "app")),
    Case("tag-image-traversal", ("tag", "--image", "../../v2"), ("invalid image name",)),
    # -- environment values --------------------------------------------------------------------
    Case("arch-with-space", ("build-arch",), ("aarch 64",), env={"IMAGE_ARCH": "aarch 64"}),
    Case("arch-unsupported", ("build-arch",), ("mips", "amd64"), env={"IMAGE_ARCH": "mips"}),
    Case("arches-unsupported", ("manifest",), ("sparc",), env={"IMAGE_ARCHES": "amd64 sparc"}),
    Case("arches-empty", ("manifest",), ("no architectures",), env={"IMAGE_ARCHES": None}),
    Case("isolation-invalid", ("build",), ("BUILDAH_ISOLATION", "chroot"),
         env={"BUILDAH_ISOLATION": "docker"}),
    Case("format-invalid", ("build",), ("BUILDAH_FORMAT", "docker or oci"),
         env={"BUILDAH_FORMAT": "v3"}),
    Case("bool-invalid", ("build",), ("KILN_LAYERS", "true/false"), env={"KILN_LAYERS": "maybe"}),
    Case("pipeline-id-slash", ("tag",), ("invalid pipeline id '12/34'",),
         env={"CI_PIPELINE_ID": "12/34"}),
    Case("git-tag-invalid", ("tag",), ("git tag 'v1 .0' is not a valid image tag",),
         env={"CI_COMMIT_TAG": "v1 .0"}),
    Case("git-tag-production", ("tag",), ("collides",), env={"CI_COMMIT_TAG": "production"}),
    Case("mr-iid-invalid", ("deploy-mr",), ("invalid merge request iid 'abc'",),
         env={"CI_MERGE_REQUEST_IID": "abc"}),
    Case("stop-mr-without-mr", ("stop-mr",), ("no merge request",)),
    Case("registry-uppercase", ("tag",), ("invalid repository name 'Bad_Repo/app'",),
         env={"KILN_REGISTRY": "{registry}/Bad_Repo"}),
    Case("registry-url-scheme", ("tag",), ("KILN_REGISTRY", "not a registry prefix",
                                           "without a scheme"),
         env={"KILN_REGISTRY": "http://{prefix}"}),
    Case("registry-with-space", ("build",), ("KILN_REGISTRY", "not a registry prefix"),
         env={"KILN_REGISTRY": "{prefix} x"}),
    Case("ca-bundle-missing", ("build",), ("/nonexistent/ca.pem",),
         env={"KILN_CA_BUNDLE": "/nonexistent/ca.pem"}),
    Case("auth-file-not-json", ("tag",), ("auth.json", "not valid JSON"),
         env={"REGISTRY_AUTH_FILE": "auth.json", "CI_REGISTRY_PASSWORD": None},
         files={"auth.json": "{not json"}),
    # -- configuration files ---------------------------------------------------------------------
    Case("pyproject-not-toml", ("build",), ("pyproject.toml",),
         files={"pyproject.toml": "[tool.kiln\nx = 1\n"}),
    Case("pyproject-unknown-key", ("build",), ("unknown setting 'registy'",),
         files={"pyproject.toml": "[tool.kiln]\nregisty = \"x\"\n"}),
    Case("pyproject-image-traversal", ("tag",), ("../x",),
         files={"pyproject.toml": "[tool.kiln.images.\"../x\"]\nprivate = true\n"}),
    Case("pyproject-image-unknown-key", ("tag",), ("unknown keys", "destination"),
         files={"pyproject.toml": "[tool.kiln.images.app]\ndestination = [\"x\"]\n"}),
    Case("private-to-public", ("tag",), ("private", "quay.io"),
         files={"pyproject.toml": "[tool.kiln.images.app]\nprivate = true\n"
                                  "destinations = [\"quay.io/team\"]\n"}),
    Case("mirrors-not-yaml", ("mirror",), ("mirrors.yml:3:1: not valid YAML",
                                           "flow sequence at line 2, column 5"),
         files={"mirrors.yml": "images:\n  - [unclosed\n"}),
    Case("mirrors-unknown-key", ("mirror",), ("mirrors.yml:3:5", "unknown key 'destnation'"),
         files={"mirrors.yml": "images:\n  - source: library/alpha:1\n    destnation: x/y\n"}),
    Case("mirrors-bad-reference", ("mirror",), ("mirrors.yml:2", "Library/Alpha"),
         files={"mirrors.yml": "images:\n  - Library/Alpha:1\n"}),
    Case("mirrors-jobs-zero", ("mirror",), ("mirrors.yml:1", "jobs"),
         files={"mirrors.yml": "jobs: 0\nimages:\n  - library/alpha:1\n"}),
    Case("mirrors-missing", ("mirror", "--config", "nope.yml"), ("nope.yml", "not found")),
    Case("mirror-jobs-not-a-number", ("mirror", "--jobs", "x"), ("--jobs must be a whole number",)),
    Case("mirror-only-no-match", ("mirror", "--only", "nomatch*"), ("matches no image",)),
    # -- credentials that would end up in the image ------------------------------------------------
    Case("secret-build-arg", ("build",), ("NPM_TOKEN", "RUN --mount=type=secret"),
         env={"KILN_BUILD_ARGS": "NPM_TOKEN=npm-secret-value-1"},
         absent=("npm-secret-value-1",)),
    Case("secret-env", ("build",),
         ("builds/app.in:3 (Containerfile ", "Containerfile:3) ENV", "DB_PASSWORD",
          "--mount=type=secret"),
         files=build_file("ARG REGISTRY=x\nFROM ${REGISTRY}/base:p-7\nENV DB_PASSWORD=hunter22xx\n"),
         absent=("hunter22xx",)),
    Case("secret-label-token", ("build",), ("LABEL", "GitLab token"),
         files=build_file(f"FROM scratch\nLABEL ci.token.note=\"{GLPAT}\"\n"), absent=(GLPAT,)),
    Case("secret-arg-default", ("build",), ("ARG", "AWS access key id"),
         files=build_file(f"FROM scratch\nARG AWS_KEY_ID={AKIA}\n"), absent=(AKIA,)),
    Case("secret-run-url", ("build",), ("RUN", "password in a URL"),
         files=build_file("FROM scratch\nRUN pip install --index-url "
                          "https://ci:pypi-pw-12345@pypi.example.com/simple app\n"),
         absent=("pypi-pw-12345",)),
    Case("build-secret-spec", ("build",), ("KILN_BUILD_SECRETS", "id=npm"),
         env={"KILN_BUILD_SECRETS": "id=npm"}),
    # -- registry state that makes the task impossible ----------------------------------------
    Case("manifest-arch-missing", ("manifest",), ("p-7-arm64", "build-arch"),
         env={"IMAGE_ARCHES": "amd64 arm64"}),
    Case("tag-source-missing", ("tag",), ("p-8", "cannot be read"),
         env={"CI_PIPELINE_ID": "8"}),
]


def copy_within(host: str, source: str, dest: str, tag: str) -> None:
    """``source:tag`` also as ``dest:tag`` in the same registry (blobs mounted, manifest PUT)."""
    with RegistryClient(host) as client:
        manifest = client.get_manifest(source, tag)
        for blob in [media.config_descriptor(manifest.body),
                     *media.layer_descriptors(manifest.body)]:
            resp = client._http.post(
                f"http://{host}/v2/{dest}/blobs/uploads/?mount={blob.digest}&from={source}")
            assert resp.status_code == 201, resp.text
        client.put_manifest(dest, tag, manifest)


def _write(project: Path, case: Case, registry: str) -> None:
    files: dict[str, str | None] = {
        "pyproject.toml": "[tool.kiln]\n",
        "builds/app.in": APP_IN,
        "includes/step": "RUN true\n",
        "mirrors.yml": MIRRORS.format(registry=registry),
    }
    files.update(case.files)
    for name, text in files.items():
        path = project / name
        if text is None:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for name, target in case.links.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, project / name)


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[dict[str, Outcome], list[str]]]:
    """Every row's outcome, and the registry writes the whole table caused."""
    require_tool("docker-registry", "docker-registry")
    require_tool("skopeo", "skopeo")
    base = tmp_path_factory.mktemp("bad-input")
    server = RegistryServer(base / "registry")
    server.start()
    try:
        host = server.address
        push_test_image(base, f"{host}/library/alpha:1", label="alpha")
        first = f"{CASES[0].id}/app"
        push_test_image(base, f"{host}/{first}:p-7")
        push_test_image(base, f"{host}/{first}:p-7-amd64", label="amd64")
        for case in CASES[1:]:  # registry-side copies: blobs mounted, manifests PUT
            for tag in ("p-7", "p-7-amd64"):
                copy_within(host, first, f"{case.id}/app", tag)
        mark = server.log_mark()

        def run(case: Case) -> tuple[str, Outcome]:
            project = base / case.id
            project.mkdir()
            prefix = f"{host}/{case.id}"
            _write(project, case, host)
            env: dict[str, str] = {
                "CI": "true", "CI_PIPELINE_ID": "7", "CI_COMMIT_BRANCH": "main",
                "CI_DEFAULT_BRANCH": "main", "IMAGE_NAME": "app", "IMAGE_ARCHES": "amd64",
                "KILN_REGISTRY": prefix, "CI_REGISTRY_USER": "ci",
                "CI_REGISTRY_PASSWORD": PASSWORD, "KILN_STORAGE_DRIVER": "vfs",
                "KILN_STORAGE_ROOT": str(base / "storage" / "root"),
                "KILN_STORAGE_RUNROOT": str(base / "storage" / "runroot"),
            }
            for key, value in case.env.items():
                if value is None:
                    env.pop(key, None)
                else:
                    env[key] = value.format(registry=host, prefix=prefix)
            done = run_kiln(project, *case.args, env=env, timeout=120)
            return case.id, Outcome(done.returncode, done.stdout, done.stderr)

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = dict(pool.map(run, CASES))
        writes = [r.path for r in server.requests_since(mark)
                  if r.method in {"PUT", "POST", "PATCH", "DELETE"}]
        yield results, writes
    finally:
        server.stop()


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, outcomes: tuple[dict[str, Outcome], list[str]]) -> None:
    results, writes = outcomes
    outcome = results[case.id]
    assert outcome.code == case.code, outcome.stderr + outcome.stdout
    for text in case.expect:
        assert text in outcome.stderr, f"{text!r} not in:\n{outcome.stderr}"
    everything = outcome.stdout + outcome.stderr
    for secret in (PASSWORD, *case.absent):
        assert secret not in everything
    assert "Traceback" not in everything
    assert [w for w in writes if w.startswith(f"/v2/{case.id}/")] == [], "written to the registry"


def test_no_bad_input_wrote_anything(outcomes: tuple[dict[str, Outcome], list[str]]) -> None:
    assert outcomes[1] == []


@pytest.mark.parametrize(("args", "expect"), [
    (("build", "--bogus"), "No idea what '--bogus' is"),
    (("bild",), "No idea what 'bild' is"),
    (("tag", "--registry"), "--registry needs a value"),
])
def test_kiln_command_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...],
                                          expect: str) -> None:
    """The ``kiln`` command (kiln.cli): a command line it cannot parse is bad input, exit 2."""
    import subprocess
    import sys

    from helpers.run import clean_env

    done = subprocess.run(
        [sys.executable, "-c", "import sys; from kiln.cli import main; sys.argv[0] = 'kiln'; "
         "main()", *args], cwd=tmp_path, env=clean_env(), capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert expect in done.stderr and "'kiln --list' shows the tasks" in done.stderr
    assert "Traceback" not in done.stderr
