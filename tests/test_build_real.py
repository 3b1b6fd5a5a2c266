"""Real builds: buildah (the session's own --root/--runroot), a real registry, skopeo to check
what landed, qemu for arm64. A small project is written per test: build files, an include, a
file COPYed from the context; the upstream image is kiln.seed's busybox manifest list (amd64 +
arm64, from Debian's busybox-static packages) in the test registry's mirror/."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from conftest import require_tool, skip_or_fail, unmount_below
from kiln import build, qemu
from kiln.arch import host_arch
from kiln.errors import BuildError, InputError
from kiln.local_registry import RegistryServer, stop_local_registry
from kiln.seed import seed_upstream
from kiln.settings import Settings

pytestmark = pytest.mark.real

DRIVER = "overlay"


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tools(buildah_storage: dict[str, Path]) -> Iterator[None]:
    for tool, package in (("buildah", "buildah"), ("skopeo", "skopeo"),
                          ("busybox", "busybox-static")):
        require_tool(tool, package)
    yield
    _unmount_storage(buildah_storage)


def _unmount_storage(storage: Mapping[str, Path]) -> None:
    """buildah's overlay driver leaves its storage mounts when it exits; drop this session's
    own (and only those) so the temporary folder can be removed."""
    root = str(storage["root"])
    subprocess.run(["buildah", "--root", root, "--runroot", str(storage["runroot"]),
                    "--storage-driver", DRIVER, "rm", "--all"], capture_output=True, check=False)
    unmount_below(storage["root"])


def _buildah(storage: Mapping[str, Path], *args: str) -> str:
    argv = ["buildah", "--root", str(storage["root"]), "--runroot", str(storage["runroot"]),
            "--storage-driver", DRIVER, *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout.strip()


@pytest.fixture(scope="session")
def upstream(tools: None, shared_registry: RegistryServer, buildah_storage: dict[str, Path],
             tmp_path_factory: pytest.TempPathFactory) -> str:
    """``<registry>/mirror`` holding ``library/busybox:latest`` (an amd64+arm64 list made by
    :func:`kiln.seed.seed_upstream` from Debian's busybox-static) and its single-arch children
    ``latest-amd64``/``latest-arm64``."""
    work = tmp_path_factory.mktemp("seed")
    settings = make_settings(work, buildah_storage, {})
    seed_upstream(settings, shared_registry.address, names=["library/busybox:latest"],
                  cache_dir=work / "cache")  # nothing to push when another module seeded it
    mirror = f"{shared_registry.address}/mirror"
    for tag in ("latest", "latest-amd64", "latest-arm64"):
        assert skopeo("inspect", "--raw", "--tls-verify=false",
                      f"docker://{mirror}/library/busybox:{tag}").returncode == 0, tag
    return mirror


@pytest.fixture(scope="session")
def binfmt_arm64() -> None:
    require_tool("qemu-aarch64-static", "qemu-user-static")
    if os.geteuid() != 0 and qemu.read_entry("arm64") is None:
        skip_or_fail("registering binfmt handlers needs root")
    qemu.register_binfmt(["arm64"])


BASE_IN = """\
ARG UPSTREAM_REGISTRY=docker.io
FROM ${UPSTREAM_REGISTRY}/library/busybox:latest
#include "stamp"
"""
STAMP = """\
/* an include: comments vanish, URLs with // stay */
RUN echo "base built; see https://example.org/docs" > /base-stamp
"""
APP_IN = """\
ARG REGISTRY=localhost
ARG BASE_IMAGE_TAG=latest
FROM ${REGISTRY}/base:${BASE_IMAGE_TAG}
COPY services/app/hello.txt /hello.txt
RUN uname -m > /arch && cat /base-stamp /hello.txt > /combined
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "builds").mkdir(parents=True)
    (root / "includes").mkdir()
    (root / "services" / "app").mkdir(parents=True)
    (root / "builds" / "base.in").write_text(BASE_IN)
    (root / "builds" / "app.in").write_text(APP_IN)
    (root / "includes" / "stamp").write_text(STAMP)
    (root / "services" / "app" / "hello.txt").write_text("hello from the context\n")
    return root


def make_settings(project: Path, storage: Mapping[str, Path], env: Mapping[str, str]) -> Settings:
    return Settings.resolve(project, {}, dict(env), {
        "storage_root": storage["root"], "storage_runroot": storage["runroot"],
        "storage_driver": DRIVER,
    })


def ci_env(registry: str, upstream: str, pipeline: str = "123") -> dict[str, str]:
    return {
        "CI": "true", "CI_PIPELINE_ID": pipeline, "CI_REGISTRY_IMAGE": registry,
        "KILN_UPSTREAM_REGISTRY": upstream,
        "CI_PROJECT_URL": "https://gitlab.example/group/project",
        "CI_COMMIT_SHA": "0123456789abcdef0123456789abcdef01234567",
    }


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)


def inspect(ref: str, raw: bool = False) -> dict[str, object]:
    done = skopeo("inspect", *(["--raw"] if raw else []), "--tls-verify=false", f"docker://{ref}")
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def read_file(storage: Mapping[str, Path], ref: str, path: str) -> str:
    """A file of a local image, read through ``buildah mount`` (no process of the image runs)."""
    container = _buildah(storage, "from", "--pull=never", ref)
    try:
        return (Path(_buildah(storage, "mount", container)) / path.lstrip("/")).read_text()
    finally:
        _buildah(storage, "rm", container)


def unique() -> str:
    return "t" + uuid.uuid4().hex[:8]


# -- tests -----------------------------------------------------------------------------------

def test_build_pushes_v2s2_with_labels_and_builds_the_missing_base(
        project: Path, shared_registry: RegistryServer, buildah_storage: dict[str, Path],
        upstream: str) -> None:
    registry = f"{shared_registry.address}/{unique()}"
    settings = make_settings(project, buildah_storage, ci_env(registry, upstream))
    results = build.build(settings, "app")

    assert [r.ref for r in results] == [f"{registry}/base:p-123", f"{registry}/app:p-123"]
    assert all(r.pushed and r.digest and r.digest.startswith("sha256:") for r in results)
    assert results[0].dependency and not results[1].dependency

    raw = inspect(f"{registry}/app:p-123", raw=True)
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    info = inspect(f"{registry}/app:p-123")
    assert info["Digest"] == results[1].digest
    assert info["Architecture"] == host_arch()  # amd64 on x86_64, arm64 on aarch64
    labels = info["Labels"]
    assert isinstance(labels, dict)
    assert labels["org.opencontainers.image.source"] == "https://gitlab.example/group/project"
    assert labels["org.opencontainers.image.revision"] == settings.ci.commit_sha
    assert labels["org.opencontainers.image.created"].endswith("Z")
    assert inspect(f"{registry}/base:p-123")["Digest"] == results[0].digest

    # The Containerfile kiln wrote: include resolved, comment gone, URL kept.
    text = (settings.state_dir / "build" / "base" / "Containerfile").read_text()
    assert "https://example.org/docs" in text and "/*" not in text and "#include" not in text
    # The image is in local storage under its full reference, built FROM base:p-123.
    assert read_file(buildah_storage, f"{registry}/app:p-123", "/combined") == (
        "base built; see https://example.org/docs\nhello from the context\n")
    assert read_file(buildah_storage, f"{registry}/app:p-123", "/arch") == f"{os.uname().machine}\n"


def test_same_base_is_reused_by_key_and_no_deps_is_honoured(
        project: Path, shared_registry: RegistryServer, buildah_storage: dict[str, Path],
        upstream: str) -> None:
    registry = f"{shared_registry.address}/{unique()}"
    env = ci_env(registry, upstream, pipeline="7")
    first = build.build(make_settings(project, buildah_storage, {**env, "KILN_DEPS": "false",
                                                                 "CI_PIPELINE_ID": "6"}), "base")
    # base:p-6 and its key tag exist now. app's graph reuses base (a manifest copy, nothing
    # built) and builds app FROM that digest.
    repo = registry.split("/", 1)[1]
    settings = make_settings(project, buildah_storage, env)
    mark = shared_registry.log_mark()
    results = build.build(settings, "app")
    assert [(r.ref, r.reused) for r in results] == [(f"{registry}/base:p-7", True),
                                                    (f"{registry}/app:p-7", False)]
    assert results[0].digest == first[0].digest and results[0].key == first[0].key
    pushed = {r.path for r in shared_registry.requests_since(mark)
              if r.method == "PUT" and r.kind == "manifest"}
    assert pushed == {f"/v2/{repo}/base/manifests/p-7", f"/v2/{repo}/app/manifests/p-7",
                      f"/v2/{repo}/app/manifests/k-{(results[1].key or '')[7:39]}"}
    containerfile = (settings.state_dir / "build" / "app" / "Containerfile").read_text()
    assert f"FROM {registry}/base@{first[0].digest}" in containerfile
    labels = inspect(f"{registry}/app:p-7")["Labels"]
    assert isinstance(labels, dict) and labels["dev.kiln.input-key"] == results[1].key

    # --no-deps: app alone, FROM whatever BASE_IMAGE_TAG names (p-6 here), nothing else written
    mark = shared_registry.log_mark()
    alone = build.build(make_settings(project, buildah_storage, {
        **env, "CI_PIPELINE_ID": "8", "KILN_DEPS": "false", "BASE_IMAGE_TAG": "p-6"}), "app")
    assert [(r.ref, r.reused) for r in alone] == [(f"{registry}/app:p-8", True)]
    assert {r.path for r in shared_registry.requests_since(mark) if r.method == "PUT"} == {
        f"/v2/{repo}/app/manifests/p-8"}


def test_failing_step_reports_step_and_output_and_pushes_nothing(
        project: Path, shared_registry: RegistryServer, buildah_storage: dict[str, Path],
        upstream: str) -> None:
    (project / "builds" / "broken.in").write_text(
        "ARG UPSTREAM_REGISTRY\nFROM ${UPSTREAM_REGISTRY}/library/busybox:latest\n"
        "RUN echo fine > /fine\n"
        "RUN echo 'compiler says: no' >&2 && \\\n    false\n"
        "RUN echo never\n")
    registry = f"{shared_registry.address}/{unique()}"
    settings = make_settings(project, buildah_storage, ci_env(registry, upstream))
    mark = shared_registry.log_mark()
    with pytest.raises(BuildError) as err:
        build.build(settings, "broken")
    message = str(err.value)
    assert "failed at step \"RUN echo 'compiler says: no' >&2 &&" in message
    assert f"{settings.state_dir / 'build' / 'broken' / 'Containerfile'}:4" in message
    assert "compiler says: no" in message
    assert err.value.exit_code == 5
    writes = [r for r in shared_registry.requests_since(mark) if r.method in {"PUT", "POST",
                                                                              "PATCH"}]
    assert writes == []
    assert skopeo("inspect", "--tls-verify=false", f"docker://{registry}/broken:p-123"
                  ).returncode != 0
    # --force-rm: the failed step's working container is gone (no mount left behind).
    assert _buildah(buildah_storage, "containers", "--quiet") == ""


def test_build_arch_arm64_runs_under_qemu(
        project: Path, shared_registry: RegistryServer, buildah_storage: dict[str, Path],
        upstream: str, binfmt_arm64: None) -> None:
    registry = f"{shared_registry.address}/{unique()}"
    settings = make_settings(project, buildah_storage, ci_env(registry, upstream, "55"))
    results = build.build(settings, "app", arch="aarch64")
    assert [r.ref for r in results] == [f"{registry}/base:p-55-arm64",
                                        f"{registry}/app:p-55-arm64"]
    info = inspect(f"{registry}/app:p-55-arm64")
    assert info["Architecture"] == "arm64"
    assert inspect(f"{registry}/app:p-55-arm64", raw=True)["mediaType"] == (
        "application/vnd.docker.distribution.manifest.v2+json")
    # `uname -m` ran in the RUN step: under qemu it reports aarch64.
    assert read_file(buildah_storage, f"{registry}/app:p-55-arm64", "/arch") == "aarch64\n"


def test_build_arch_refuses_a_base_without_that_arch(
        project: Path, shared_registry: RegistryServer, buildah_storage: dict[str, Path],
        upstream: str, binfmt_arm64: None) -> None:
    (project / "builds" / "single.in").write_text(
        "ARG UPSTREAM_REGISTRY\nFROM ${UPSTREAM_REGISTRY}/library/busybox:latest-amd64\n"
        "RUN uname -m > /arch\n")
    registry = f"{shared_registry.address}/{unique()}"
    settings = make_settings(project, buildah_storage, ci_env(registry, upstream, "56"))
    # Built natively first, every step of the arm64 build below is a cache hit: buildah would
    # just add the arm64 name to the amd64 image.
    native = build.build(settings.replace(push=False), "single")
    mark = shared_registry.log_mark()
    with pytest.raises(BuildError, match="used a base image for amd64"):
        build.build(settings, "single", arch="arm64")
    assert not [r for r in shared_registry.requests_since(mark) if r.method == "PUT"]
    buildah = build.Buildah.from_settings(settings)
    assert not buildah.image_exists(f"{registry}/single:p-56-arm64")
    assert buildah.image_exists(native[0].ref)


@pytest.fixture
def local_state(project: Path) -> Iterator[Path]:
    state = project / ".kiln"
    yield state
    stop_local_registry(state)


def test_local_flow_uses_the_embedded_registry(
        project: Path, buildah_storage: dict[str, Path], upstream: str,
        local_state: Path) -> None:
    """No registry, not CI: kiln starts the embedded registry, seeds/uses its mirror, builds
    into local storage and pushes there."""
    settings = make_settings(project, buildah_storage, {})
    assert settings.registry is None and not settings.ci.in_ci
    from kiln.local_registry import start_local_registry

    address = start_local_registry(local_state).address
    # The offline upstream: kiln.seed provides it; copy ours in so this test only needs build.
    done = skopeo("copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
                  f"docker://{upstream}/library/busybox:latest",
                  f"docker://{address}/mirror/library/busybox:latest")
    assert done.returncode == 0, done.stderr
    results = build.build(settings, "app")
    assert [r.ref for r in results] == [f"{address}/base:p-local", f"{address}/app:p-local"]
    assert inspect(f"{address}/app:p-local")["Digest"] == results[1].digest
    assert read_file(buildah_storage, f"{address}/app:p-local", "/hello.txt") == (
        "hello from the context\n")


def test_dry_run_changes_nothing(project: Path, buildah_storage: dict[str, Path],
                                 shared_registry: RegistryServer, upstream: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    registry = f"{shared_registry.address}/{unique()}"
    settings = make_settings(project, buildah_storage,
                             {**ci_env(registry, upstream), "KILN_DRY_RUN": "true"})
    mark = shared_registry.log_mark()
    results = build.build(settings, "app")
    plan = capsys.readouterr().out
    assert [r.image for r in results] == ["base", "app"]
    assert not settings.state_dir.exists()
    assert [r.method for r in shared_registry.requests_since(mark)
            if r.method not in {"GET", "HEAD"}] == []
    containerfile = settings.state_dir / "build" / "app" / "Containerfile"
    assert f"write {containerfile}" in plan
    assert f"-t {registry}/app:p-123 {project}" in plan
    assert f"push --format v2s2 --tls-verify=false --digestfile '<digest file>' {registry}/app:p-123" in plan


def test_push_with_ci_credentials_over_tls_never_shows_the_password(
        project: Path, buildah_storage: dict[str, Path], upstream: str,
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """CI_REGISTRY_USER/PASSWORD against a TLS registry with htpasswd auth and a private CA
    (KILN_CA_BUNDLE): the password reaches buildah only through a temporary auth file."""
    from helpers.secure import cert_dir, make_pki, tls_http_config, write_htpasswd

    password = "s3cret-" + uuid.uuid4().hex
    pki = make_pki(tmp_path / "pki")
    server = RegistryServer(tmp_path / "tls-registry", extra_config={
        "http": tls_http_config(pki),
        "auth": {"htpasswd": {"realm": "kiln-test",
                              "path": str(write_htpasswd(tmp_path / "htpasswd",
                                                         {"ci": password}))}},
    })
    host = server.start()
    try:
        certs = cert_dir(pki, tmp_path / "certs")
        done = skopeo("copy", "--all", "--src-tls-verify=false", "--dest-cert-dir", str(certs),
                      "--dest-creds", f"ci:{password}",
                      f"docker://{upstream}/library/busybox:latest",
                      f"docker://{host}/mirror/library/busybox:latest")
        assert done.returncode == 0, done.stderr
        env = {**ci_env(host, f"{host}/mirror", "900"), "CI_REGISTRY": host,
               "CI_REGISTRY_USER": "ci", "CI_REGISTRY_PASSWORD": password,
               "KILN_LOOPBACK_TLS": "true", "KILN_CA_BUNDLE": str(pki.ca_cert)}
        settings = make_settings(project, buildah_storage, env)
        from kiln import console
        console.register_secret(password)
        results = build.build(settings, "base")
        assert results[0].pushed and results[0].ref == f"{host}/base:p-900"
        captured = capfd.readouterr()
        assert password not in captured.out + captured.err
        assert "--tls-verify=false" not in " ".join(results[0].commands[0])
        assert "--cert-dir" in results[0].commands[0]
        # Without credentials the registry refuses: the push above really authenticated.
        anonymous = skopeo("inspect", "--cert-dir", str(certs), f"docker://{host}/base:p-900")
        assert anonymous.returncode != 0
        authed = skopeo("inspect", "--cert-dir", str(certs), "--creds", f"ci:{password}",
                        f"docker://{host}/base:p-900")
        assert authed.returncode == 0, authed.stderr
        assert json.loads(authed.stdout)["Digest"] == results[0].digest
        leftovers = list(Path(os.environ.get("TMPDIR", "/tmp")).glob("kiln-auth-*"))
        assert not [p for p in leftovers if (p / "auth.json").exists()
                    and password in (p / "auth.json").read_text()]
    finally:
        server.stop()


def test_missing_base_image_is_an_input_error(
        project: Path, shared_registry: RegistryServer, buildah_storage: dict[str, Path],
        upstream: str) -> None:
    registry = f"{shared_registry.address}/{unique()}"
    settings = make_settings(project, buildah_storage,
                             {**ci_env(registry, upstream), "BASE_IMAGE_TAG": "no-such-tag",
                              "KILN_DEPS": "false"})
    mark = shared_registry.log_mark()
    with pytest.raises(InputError, match="FROM image .*/base:no-such-tag does not exist") as err:
        build.build(settings, "app")
    assert err.value.hint is not None and "nothing was built" in err.value.hint
    assert f"{settings.state_dir / 'build' / 'app' / 'Containerfile'}:3" in str(err.value)
    assert [r for r in shared_registry.requests_since(mark) if r.method == "PUT"] == []
