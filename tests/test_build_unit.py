"""The build engine's pure parts: references, build args, labels, FROM parsing, the dependency
plan, buildah argv, auth files and error messages. No subprocess (``no_subprocess``)."""

from __future__ import annotations

import json
import stat
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from kiln import build
from kiln.build import ImageGraph, Node, Source, Step, Target
from kiln.build.plan import dependency_tag, image_name_in, make_step, read_sources
from kiln.buildah import Buildah
from kiln.containerfile import parse_from_lines
from kiln.errors import (
    BuildError,
    ConfigError,
    InputError,
    KilnError,
    RegistryAuthError,
    RegistryError,
    RegistryTransientError,
)
from kiln.settings import Settings

pytestmark = pytest.mark.usefixtures("no_subprocess")

ROOT = Path("/repo")


def settings(env: Mapping[str, str] | None = None, project: Path = ROOT,
             **flags: object) -> Settings:
    return Settings.resolve(project, {}, dict(env or {}), flags)


# -- references ------------------------------------------------------------------------------

def test_image_ref_follows_the_contract() -> None:
    assert build.image_ref("127.0.0.1:5000", "backend", "local") == "127.0.0.1:5000/backend:p-local"
    assert (build.image_ref("registry.gitlab.com/g/p/", "backend", "123", "arm64")
            == "registry.gitlab.com/g/p/backend:p-123-arm64")


def test_invalid_pipeline_id_is_an_input_error() -> None:
    with pytest.raises(InputError, match="pipeline id"):
        build.pipeline_tag("12 3")


# loopback registries: tests/test_registry_access.py (kiln.registry.access.is_loopback)


def test_push_format_keeps_docker_v2s2() -> None:
    assert build.push_format("docker") == "v2s2"
    assert build.push_format("oci") == "oci"


# -- build args and labels ---------------------------------------------------------------------

def test_build_arguments_contract_then_settings_then_image() -> None:
    s = settings({"BASE_IMAGE_TAG": "v1", "KILN_BUILD_ARGS": "A=1"})
    args = build.build_arguments(s, "other", "reg.example/x", "up.example")
    assert list(args)[:3] == ["REGISTRY", "UPSTREAM_REGISTRY", "BASE_IMAGE_TAG"]
    assert args["BASE_IMAGE_TAG"] == "v1"
    assert args["A"] == "1"


def test_build_arguments_image_settings_and_dependency_tag_win() -> None:
    from kiln.settings import ImageSettings

    s = settings({"KILN_BUILD_ARGS": "A=1"}).replace(
        images={"backend": ImageSettings(build_args={"A": "2", "B": "3"})})
    args = build.build_arguments(s, "backend", "r", "u", base_image_tag="p-7")
    assert args == {"REGISTRY": "r", "UPSTREAM_REGISTRY": "u", "BASE_IMAGE_TAG": "p-7",
                    "A": "2", "B": "3"}


def test_oci_labels_leave_out_what_is_unknown() -> None:
    assert build.oci_labels(None, None, "2024-01-02T03:04:05Z") == {
        "org.opencontainers.image.created": "2024-01-02T03:04:05Z"}
    labels = build.oci_labels("https://gitlab.example/g/p", "abc123", "T")
    assert labels["org.opencontainers.image.source"] == "https://gitlab.example/g/p"
    assert labels["org.opencontainers.image.revision"] == "abc123"


def test_remote_url_credentials_never_reach_a_label() -> None:
    assert (build.strip_userinfo("https://gitlab-ci-token:s3cr3t@gitlab.example/g/p.git")
            == "https://gitlab.example/g/p.git")
    assert build.strip_userinfo("git@gitlab.example:g/p.git") == "git@gitlab.example:g/p.git"


# -- FROM lines (read by kiln.containerfile: tests/test_containerfile.py) ------------------------

def test_own_dependencies_are_our_registry_and_known_builds() -> None:
    froms = parse_from_lines(
        "FROM reg/x/python:latest AS py\nFROM reg/x/unknown:1\nFROM other/base:1\n"
        "FROM py\nFROM reg/x/base@sha256:abc\nFROM reg/x/python:latest\n", {})
    deps = build.own_dependencies(froms, "reg/x", ["python", "base", "backend"])
    assert deps == [("python", "reg/x/python:latest"), ("base", "reg/x/base@sha256:abc")]
    assert build.own_dependencies(froms, "reg/x", ["python"], exclude="python") == []


def test_upstream_names() -> None:
    froms = parse_from_lines("FROM 127.0.0.1:5/mirror/library/debian:bookworm\n"
                                   "FROM 127.0.0.1:5/base:latest\n", {})
    assert build.upstream_names(froms, "127.0.0.1:5/mirror") == ["library/debian:bookworm"]


# -- the dependency plan -----------------------------------------------------------------------

FILES = {
    "base": "ARG UPSTREAM_REGISTRY\nFROM ${UPSTREAM_REGISTRY}/library/debian:bookworm\n",
    "python": "ARG REGISTRY\nARG BASE_IMAGE_TAG=latest\nFROM ${REGISTRY}/base:${BASE_IMAGE_TAG}\n",
    "backend": ("ARG REGISTRY\nARG BASE_IMAGE_TAG=latest\n"
                "FROM ${REGISTRY}/python:${BASE_IMAGE_TAG}\nRUN true\n"),
}
TARGET = Target("reg.example/g", "reg.example/g/mirror", push=True)
# kiln.containerfile's rules reach the plan: a FROM inside a heredoc is text, not a dependency;
# a comment inside a continuation does not end the FROM.
TRICKY = {
    **FILES,
    "app": ("ARG REGISTRY\nARG BASE_IMAGE_TAG=latest\nFROM \\\n# the base image:\n"
            "    ${REGISTRY}/python:${BASE_IMAGE_TAG}\n"
            "COPY <<EOF /notes\nFROM ${REGISTRY}/base:latest\nEOF\n"),
}


def plan(files: Mapping[str, str], image: str, *, deps: bool = True,
         arch: str | None = None, pipeline: str = "local") -> list[Step]:
    """The steps kiln.build.run plans, from the pure parts (no registry, no files)."""
    s = settings()
    known = sorted(files)

    def load(name: str) -> Source:
        text = files[name]
        args = build.build_arguments(s, name, TARGET.registry, TARGET.upstream_registry)
        froms = parse_from_lines(text, args)
        if deps and any(image_name_in(f.image, TARGET.registry) in known for f in froms):
            args = build.build_arguments(s, name, TARGET.registry, TARGET.upstream_registry,
                                         dependency_tag(pipeline, arch))
            froms = parse_from_lines(text, args)
        return Source(name, f"builds/{name}.in", f".kiln/build/{name}/Containerfile", text,
                      args, tuple(froms))

    sources = read_sources([image], load, registry=TARGET.registry,
                           upstream_registry=TARGET.upstream_registry, known_images=known,
                           follow=deps)
    graph = (build.make_graph(sources, registry=TARGET.registry,
                              upstream_registry=TARGET.upstream_registry, known_images=known,
                              arches=(arch or "amd64",))
             if deps else ImageGraph({image: Node(image, ("amd64",), (), "builds/x.in")}))
    return [make_step(sources[name], target=TARGET, pipeline_id=pipeline, arch=arch,
                      dependency=name != image, built_deps=graph.nodes[name].deps)
            for name in graph.order()]


def test_dependencies_are_planned_first_in_the_same_pipeline() -> None:
    steps = plan(FILES, "backend", pipeline="42")
    assert [s.image for s in steps] == ["base", "python", "backend"]
    assert [s.ref for s in steps] == ["reg.example/g/base:p-42", "reg.example/g/python:p-42",
                                      "reg.example/g/backend:p-42"]
    assert [s.dependency for s in steps] == [True, True, False]
    assert steps[0].build_args["BASE_IMAGE_TAG"] == "latest"  # base has no own dependency
    assert steps[1].build_args["BASE_IMAGE_TAG"] == "p-42"
    assert steps[2].froms[0].image == "reg.example/g/python:p-42"


def test_heredoc_from_is_no_dependency_and_comments_do_not_end_a_from() -> None:
    steps = plan(TRICKY, "app", pipeline="9")
    assert [s.image for s in steps] == ["base", "python", "app"]
    (from_line,) = steps[-1].froms
    assert (from_line.line, from_line.image) == (3, "reg.example/g/python:p-9")


def test_arch_builds_name_every_image_of_the_graph_per_arch() -> None:
    steps = plan(FILES, "backend", arch="arm64")
    assert [s.ref for s in steps] == ["reg.example/g/base:p-local-arm64",
                                      "reg.example/g/python:p-local-arm64",
                                      "reg.example/g/backend:p-local-arm64"]
    assert steps[2].build_args["BASE_IMAGE_TAG"] == "p-local-arm64"


def test_no_deps_builds_only_the_image() -> None:
    steps = plan(FILES, "backend", deps=False)
    assert [s.image for s in steps] == ["backend"]
    assert steps[0].build_args["BASE_IMAGE_TAG"] == "latest"


def test_shared_dependency_is_built_once() -> None:
    files = dict(FILES, app=("ARG REGISTRY\nARG BASE_IMAGE_TAG=latest\n"
                             "FROM ${REGISTRY}/python:${BASE_IMAGE_TAG} AS a\n"
                             "FROM ${REGISTRY}/base:${BASE_IMAGE_TAG}\n"))
    steps = plan(files, "app")
    assert [s.image for s in steps] == ["base", "python", "app"]
    assert steps[2].built_deps == ("base", "python")


def test_dependency_cycle_is_an_input_error_with_the_lines() -> None:
    files = {
        "a": "ARG REGISTRY\nFROM ${REGISTRY}/b:latest\n",
        "b": "ARG REGISTRY\n\nFROM ${REGISTRY}/c:latest\n",
        "c": "ARG REGISTRY\nFROM ${REGISTRY}/a:latest\n",
    }
    with pytest.raises(InputError, match="cycle between images: a -> b -> c -> a") as err:
        plan(files, "a")
    assert ".kiln/build/b/Containerfile:3 (b FROM c)" in str(err.value)


def test_from_an_image_without_a_build_file_is_an_input_error() -> None:
    files = dict(FILES, backend="ARG REGISTRY\nRUN true\nFROM ${REGISTRY}/pyhton:latest\n")
    with pytest.raises(InputError, match=r"Containerfile:3: backend is built FROM "
                                         r"reg.example/g/pyhton:latest, but there is no build "
                                         r"file builds/pyhton.in"):
        plan(files, "backend")


def test_a_fixed_tag_is_still_a_dependency() -> None:
    """FROM ${REGISTRY}/python:3.11: kiln pins it to the digest of the python it builds."""
    files = dict(FILES, backend="ARG REGISTRY\nFROM ${REGISTRY}/python:3.11\n")
    steps = plan(files, "backend")
    assert [s.image for s in steps] == ["base", "python", "backend"]


def test_a_platform_other_than_the_runs_is_an_input_error() -> None:
    files = dict(FILES, backend="ARG REGISTRY\nFROM --platform=linux/s390x ${REGISTRY}/python\n")
    with pytest.raises(InputError, match="takes python for platform linux/s390x, but this run "
                                         "builds arm64"):
        plan(files, "backend", arch="arm64")


# -- target ------------------------------------------------------------------------------------

def test_target_configured_registry_pushes() -> None:
    t = build.resolve_target(settings({"KILN_REGISTRY": "reg.example/g/"}), None)
    assert t == Target("reg.example/g", "docker.io", push=True, local=False)
    t = build.resolve_target(settings({"KILN_REGISTRY": "r", "KILN_PUSH": "false"}), None)
    assert t.push is False


def test_target_in_ci_uses_ci_registry_image_and_requires_one() -> None:
    env = {"CI": "true", "CI_PIPELINE_ID": "9", "CI_REGISTRY_IMAGE": "registry.gitlab.com/g/p"}
    assert build.resolve_target(settings(env), None).registry == "registry.gitlab.com/g/p"
    with pytest.raises(ConfigError, match="no registry configured in CI"):
        build.resolve_target(settings({"CI": "true", "CI_PIPELINE_ID": "9"}), None)


def test_target_local_flow_uses_the_embedded_registry_and_its_mirror() -> None:
    t = build.resolve_target(settings(), "127.0.0.1:4444")
    assert t == Target("127.0.0.1:4444", "127.0.0.1:4444/mirror", push=True, local=True)
    t = build.resolve_target(settings({"KILN_UPSTREAM_REGISTRY": "quay.io/mirror"}), "127.0.0.1:1")
    assert t.upstream_registry == "quay.io/mirror"
    assert build.resolve_target(settings(), None).registry == build.LOCAL_PLACEHOLDER


# -- buildah argv ------------------------------------------------------------------------------

def _step(arch: str | None = None) -> Step:
    return Step("backend", arch, "reg.example/g/backend:p-1" + (f"-{arch}" if arch else ""),
                "FROM x\n", {"REGISTRY": "reg.example/g", "BASE_IMAGE_TAG": "latest"}, ())


def test_build_command_native() -> None:
    s = settings({"KILN_STORAGE_ROOT": "/st", "KILN_STORAGE_RUNROOT": "/run/st",
                  "STORAGE_DRIVER": "overlay"})
    argv = build.build_command(Buildah.from_settings(s), s, _step(), TARGET,
                               containerfile=Path("/s/Containerfile"),
                               labels={"org.opencontainers.image.created": "T"})
    assert argv == [
        "buildah", "--root", "/st", "--runroot", "/run/st", "--storage-driver", "overlay",
        "build", "--format", "docker", "--isolation", "chroot", "--force-rm", "--layers",
        "--build-arg", "REGISTRY=reg.example/g", "--build-arg", "BASE_IMAGE_TAG=latest",
        "--label", "org.opencontainers.image.created=T",
        "-f", "/s/Containerfile", "-t", "reg.example/g/backend:p-1", "/repo",
    ]


def test_build_command_with_key_and_commit_time() -> None:
    """The input key becomes a label; the commit time fixes created times (--timestamp) and
    reaches RUN steps as SOURCE_DATE_EPOCH (pip's .pyc files, useradd's shadow entries)."""
    s = settings()
    step = replace(_step(), key="sha256:" + "ab" * 32)
    argv = build.build_command(Buildah.from_settings(s), s, step, TARGET,
                               containerfile=Path("/s/Containerfile"), labels={},
                               timestamp=1700000000)
    assert argv[argv.index("--timestamp") + 1] == "1700000000"
    assert "SOURCE_DATE_EPOCH=1700000000" in argv
    assert f"dev.kiln.input-key=sha256:{'ab' * 32}" in argv


def test_build_command_foreign_arch_insecure_local_ca_and_auth(tmp_path: Path) -> None:
    s = settings({"KILN_CA_BUNDLE": "/etc/corp-ca.pem", "KILN_LAYERS": "false",
                  "BUILDAH_FORMAT": "oci", "KILN_CONTEXT_DIR": "ctx"})
    target = Target("127.0.0.1:5000", "127.0.0.1:5000/mirror", push=True, local=True)
    argv = build.build_command(Buildah(), s, _step("arm64"), target,
                               containerfile=Path("/c"), labels={},
                               authfile=tmp_path / "auth.json")
    assert argv[:5] == ["buildah", "build", "--format", "oci", "--isolation"]
    assert "--layers" not in argv
    assert argv[argv.index("--platform") + 1] == "linux/arm64"
    assert "--arch" not in argv  # buildah 1.28 rejects --arch together with --platform
    assert "--tls-verify=false" in argv
    # mounted beside the system bundle (update-ca-certificates keeps working), clients pointed
    # at it through build args the Containerfile declares (build.run.ca_bundle_text)
    assert argv[argv.index("-v") + 1] == "/etc/corp-ca.pem:/run/kiln/ca-bundle.crt:ro"
    assert "SSL_CERT_FILE=/run/kiln/ca-bundle.crt" in argv
    assert "PIP_CERT=/run/kiln/ca-bundle.crt" in argv
    assert argv[argv.index("--authfile") + 1] == str(tmp_path / "auth.json")
    assert argv[-1] == "/repo/ctx"


def test_tls_verify_off_by_setting_and_on_for_remote_registries() -> None:
    remote = Target("quay.io/org", "docker.io", push=True)
    assert build.tls_verify_for(settings(), remote) is True
    assert build.tls_verify_for(settings({"KILN_TLS_VERIFY": "0"}), remote) is False
    mixed = Target("quay.io/org", "127.0.0.1:5000/mirror", push=True)
    assert build.tls_verify_for(settings(), mixed) is False


def test_push_command_keeps_v2s2_and_reports_the_digest() -> None:
    argv = build.push_command(Buildah(), settings(), _step(), TARGET,
                              authfile=Path("/a.json"), digestfile=Path("/d"))
    assert argv == ["buildah", "push", "--format", "v2s2", "--authfile", "/a.json",
                    "--digestfile", "/d", "reg.example/g/backend:p-1",
                    "docker://reg.example/g/backend:p-1"]
    local = Target("127.0.0.1:5000", "127.0.0.1:5000/mirror", push=True, local=True)
    assert "--tls-verify=false" in build.push_command(Buildah(), settings(), _step(), local)


# -- credentials -------------------------------------------------------------------------------

CI_ENV = {"CI": "true", "CI_PIPELINE_ID": "5", "CI_REGISTRY": "registry.example",
          "CI_REGISTRY_IMAGE": "registry.example/g/p", "CI_REGISTRY_USER": "ci-user",
          "CI_REGISTRY_PASSWORD": "hunter2-very-secret"}


def test_password_never_on_a_command_line(tmp_path: Path) -> None:
    s = settings(CI_ENV)
    target = build.resolve_target(s, None)
    with build.registry_access(s, target) as tools:
        authfile = tools.authfile
        assert authfile is not None
        argv = build.build_command(Buildah(), s, _step(), target, containerfile=Path("/c"),
                                   labels={}, authfile=authfile)
        argv += build.push_command(Buildah(), s, _step(), target, authfile=authfile)
        assert not any("hunter2" in a for a in argv)
        assert stat.S_IMODE(authfile.stat().st_mode) == 0o600
        assert stat.S_IMODE(authfile.parent.stat().st_mode) == 0o700
        assert "registry.example" in json.loads(authfile.read_text())["auths"]
    assert not authfile.exists() and not authfile.parent.exists()


def test_registry_auth_passes_a_configured_auth_file_through(tmp_path: Path) -> None:
    s = settings({"REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")})
    target = build.resolve_target(s, None)
    with build.registry_access(s, target) as tools:
        assert tools.authfile == tmp_path / "auth.json"
    with build.registry_access(settings(), target) as tools:
        assert tools.authfile is None


# -- build files and failures ------------------------------------------------------------------

def test_unknown_image_lists_the_images_that_exist(tmp_path: Path) -> None:
    (tmp_path / "builds").mkdir()
    for name in ("base", "backend"):
        (tmp_path / "builds" / f"{name}.in").write_text("FROM x\n")
    (tmp_path / "builds" / "Not Valid.in").write_text("FROM x\n")
    s = settings(project=tmp_path)
    assert build.list_images(s.builds_dir) == ["backend", "base"]
    with pytest.raises(InputError, match="unknown image 'nope'") as err:
        build.build_file_for(s, "nope")
    assert err.value.hint == f"images in {tmp_path / 'builds'}: backend, base"
    assert build.build_file_for(s, "base") == tmp_path / "builds" / "base.in"


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "..", "", "UPPER", "/abs"])
def test_image_names_cannot_leave_builds(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="invalid image name"):
        build.build_file_for(settings(project=tmp_path), name)


BUILDAH_FAILURE = """\
STEP 1/4: FROM 127.0.0.1:46241/mirror/library/busybox:latest
STEP 2/4: RUN echo before &&     echo "this step fails" >&2 &&     false
this step fails
subprocess exited with status 1
Error: building at STEP "RUN echo before &&     echo "this step fails" >&2 &&     false": exit status 1
"""


def test_build_failure_message_names_step_file_and_output() -> None:
    from kiln.proc import Result

    step = Step("bad", None, "r/bad:p-local", "FROM x\nRUN echo before && \\\n"
                "    echo \"this step fails\" >&2 && \\\n    false\n", {}, ())
    err = build._build_failure(step, Path("/s/build/bad/Containerfile"),
                               Result(("buildah",), 1, BUILDAH_FAILURE, ""))
    assert isinstance(err, BuildError) and err.exit_code == 5
    text = str(err)
    assert "failed at step 'RUN echo before" in text
    assert "Containerfile: /s/build/bad/Containerfile:2 (from builds/bad.in)" in text
    assert "this step fails" in text
    assert "nothing was pushed" in text


def test_platform_mismatch_warning_is_detected() -> None:
    out = ("WARNING: image platform ({amd64 linux  [] }) does not match the expected platform "
           "({arm64 linux  [] })\n")
    assert build.platform_mismatch(out) == "amd64"
    assert build.platform_mismatch("STEP 1/2: FROM x\n") is None


def test_source_metadata_from_ci_variables_without_git(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build.proc, "which", lambda tool: (_ for _ in ()).throw(
        KilnError("no git")))
    s = settings({"CI_PROJECT_URL": "https://gitlab.example/g/p", "CI_COMMIT_SHA": "f00"})
    source, revision, created = build.source_metadata(s, {"SOURCE_DATE_EPOCH": "86400"})
    assert (source, revision, created) == ("https://gitlab.example/g/p", "f00",
                                           "1970-01-02T00:00:00Z")
    assert build.source_metadata(settings(), {})[:2] == (None, None)


def test_loopback_tls_keeps_verification_and_ca_bundle_becomes_a_cert_dir(
        tmp_path: Path) -> None:
    bundle = tmp_path / "corp.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    s = settings({"KILN_LOOPBACK_TLS": "true", "KILN_CA_BUNDLE": str(bundle)})
    local = Target("127.0.0.1:5000", "127.0.0.1:5000/mirror", push=True, local=True)
    assert build.tls_verify_for(s, local) is True
    with build.registry_access(s, local) as tools:
        certs = tools.cert_dir
        assert certs is not None and (certs / "ca.crt").read_text() == bundle.read_text()
        argv = build.build_command(Buildah(), s, _step(), local, containerfile=Path("/c"),
                                   labels={}, cert_dir=certs)
        push = build.push_command(Buildah(), s, _step(), local, cert_dir=certs)
        assert argv[argv.index("--cert-dir") + 1] == str(certs)
        assert push[push.index("--cert-dir") + 1] == str(certs)
        assert "--tls-verify=false" not in argv + push
    assert not certs.exists()
    with build.registry_access(settings(), local) as tools:
        assert tools.cert_dir is None


UNREACHABLE = ('STEP 1/3: FROM 127.0.0.1:1/mirror/library/busybox:latest\n'
               'Error: creating build container: initializing source docker://127.0.0.1:1/mirror/'
               'library/busybox:latest: pinging container registry 127.0.0.1:1: Get '
               '"http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused\n')
MISSING = ('STEP 1/3: FROM 127.0.0.1:5/nomirror/library/busybox:latest\n'
           'Error: creating build container: initializing source docker://127.0.0.1:5/nomirror/'
           'library/busybox:latest: reading manifest latest in 127.0.0.1:5/nomirror/library/'
           'busybox: manifest unknown: manifest unknown\n')
DENIED = ('STEP 1/2: FROM reg.example/g/base:latest\nError: creating build container: '
          'initializing source docker://reg.example/g/base:latest: reading manifest latest in '
          'reg.example/g/base: unauthorized: authentication required\n')


@pytest.mark.parametrize(("output", "error"), [
    (UNREACHABLE, RegistryTransientError),
    (MISSING, InputError),
    (DENIED, RegistryAuthError),
    (BUILDAH_FAILURE, BuildError),
    # a RUN step whose own output mentions a refused connection is still a build failure
    ("STEP 2/2: RUN curl x\ncurl: connection refused\n"
     'Error: building at STEP "RUN curl x": exit status 7\n', BuildError),
])
def test_failures_are_classified_by_cause(output: str, error: type[Exception]) -> None:
    from kiln.proc import Result

    step = Step("base", None, "r/base:p-1", "ARG R\nFROM ${R}/x\nRUN curl x\n", {}, ())
    err = build._build_failure(step, Path("/c"), Result(("buildah",), 125, output, ""))
    assert type(err) is error
    assert str(err).count("nothing was pushed") == 1


def test_failing_from_is_located_through_the_resolved_image() -> None:
    from kiln.proc import Result

    text = "ARG UPSTREAM_REGISTRY\nFROM ${UPSTREAM_REGISTRY}/library/busybox:latest\n"
    froms = tuple(parse_from_lines(text, {"UPSTREAM_REGISTRY": "127.0.0.1:5/nomirror"}))
    step = Step("base", None, "r/base:p-1", text, {}, froms)
    err = build._build_failure(step, Path("/s/Containerfile"), Result(("b",), 125, MISSING, ""))
    assert "Containerfile: /s/Containerfile:2 " in str(err)


def test_push_failures_are_registry_errors() -> None:
    from kiln.proc import Result

    denied = build._push_failure(_step(), Result(("b",), 125, "Error: writing blob: "
                                                 "unauthorized: authentication required\n", ""))
    assert isinstance(denied, RegistryAuthError) and denied.exit_code == 3
    down = build._push_failure(_step(), Result(("b",), 125, "dial tcp: connection refused", ""))
    assert down.exit_code == 4
    other = build._push_failure(_step(), Result(("b",), 125, "Error: something odd", ""))
    assert isinstance(other, RegistryError)


# -- credential checks (kiln.credentials) ------------------------------------------------------

GLPAT = "glpat-" + "Ab1_" * 5  # a fake token with a real shape


def test_pre_push_scan_refuses_an_image_config_with_a_credential() -> None:
    """build's pre-push scan turns a config with a credential into a refusal: fails if build's
    findings are ever suppressed or computed by anything but kiln.credentials."""
    from kiln.credentials import SecretInImage

    step = Step("app", None, "r/app:p-1", "FROM x\n", {}, ())
    config = {"config": {"Env": ["PATH=/bin", "DB_PASSWORD=hunter22"], "Labels": {"k": GLPAT}},
              "history": [{"created_by": "|1 NPM_TOKEN=abcdefgh /bin/sh -c npm ci"}]}
    with pytest.raises(SecretInImage) as info:
        build.refuse_secret_config(settings(), step, config)
    err = info.value
    assert err.exit_code == 2
    assert "refusing to push r/app:p-1: its config carries 3 credential-looking value(s)" in str(err)
    assert err.hint is not None and "buildah rmi r/app:p-1" in err.hint
    assert "build-secrets" in err.hint
    for value in ("hunter22", GLPAT, "abcdefgh"):
        assert value not in str(err)
    clean = {"config": {"Env": ["PATH=/bin"]}, "history": [{"created_by": "/bin/sh -c true"}]}
    build.refuse_secret_config(settings(), step, clean)
    allowed = {"config": {"Env": ["DB_PASSWORD=hunter22"]}}
    build.refuse_secret_config(settings({"KILN_SECRET_ALLOW": "DB_PASSWORD"}), step, allowed)


def test_pre_build_check_covers_args_labels_containerfile_and_heredocs() -> None:
    from kiln.credentials import SecretInImage

    text = "FROM x\nRUN <<EOF\necho " + GLPAT + "\nEOF\n"
    step = Step("app", None, "r/app:p-1", text, {"NPM_TOKEN": "abcdefgh"}, ())
    with pytest.raises(SecretInImage) as info:
        build.refuse_credentials(settings(dry_run=True), [step], {"api-key": "k-12345678"})
    message = info.value.message
    assert message.startswith("refusing to build app (builds/app.in); nothing was built or pushed"
                               ": 3 credential-looking value(s)")
    assert "build arg of app: 'NPM_TOKEN'" in message
    assert "label kiln sets: 'api-key'" in message
    assert "Containerfile:2 RUN: contains a GitLab token" in message
