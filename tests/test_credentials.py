"""Credential detection: names and token shapes (kiln.redact), Containerfiles and image configs
(kiln.credentials, pure), and the scans against real tools (kiln.image_scan: an image built by
buildah, an image and an index in a registry)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import require_tool, skip_or_fail
from helpers.images import push_test_image
from kiln import credentials, image_scan, promote, redact
from kiln.ci_context import CIContext
from kiln.errors import InputError
from kiln.local_registry import RegistryServer
from kiln.registry.client import RegistryClient

# Fake credentials with real shapes (none of them is valid anywhere).
GLPAT = "glpat-" + "Ab1_" * 5
GHP = "ghp_" + "a1B2" * 9
GITHUB_PAT = "github_pat_" + "11ABCDEFG0" * 3
AKIA = "AKIA" + "ABCDEFGHIJKLMNOP"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJraWxuLXRlc3QifQ.c2lnbmF0dXJlLW5vdC1yZWFs"
PEM = "-----BEGIN RSA PRIVATE KEY-----"
SLACK = "xoxb-" + "1234567890-abcdefghij"
URL_PASSWORD = "https://deploy:s3cr3t-pw@pypi.example.com/simple"

TOKENS = {
    GLPAT: "GitLab token", GHP: "GitHub token", GITHUB_PAT: "GitHub fine-grained token",
    AKIA: "AWS access key id", JWT: "JSON web token", PEM: "private key", SLACK: "Slack token",
    URL_PASSWORD: "password in a URL", "-----BEGIN OPENSSH PRIVATE KEY-----": "private key",
    "glrt-" + "x" * 24: "GitLab token", "npm_" + "a" * 36: "npm token",
}


@pytest.mark.parametrize(("name", "word"), [
    ("NPM_TOKEN", "token"), ("DB_PASSWORD", "password"), ("db-passwd", "passwd"),
    ("apiKey", "api_key"), ("API_KEY", "api_key"), ("AWS_SECRET_ACCESS_KEY", "access_key"),
    ("client_secret", "client_secret"), ("GITHUB_PAT", "pat"), ("SSH_PRIVATE_KEY", "private_key"),
    ("app.secret", "secret"), ("JWT_SIGNING_KEY", "signing_key"), ("Credentials", "credentials"),
    ("TOKENIZER_MODEL", None), ("PASSWORDLESS_LOGIN", None), ("BASE_IMAGE_TAG", None),
    ("REGISTRY", None), ("UPSTREAM_REGISTRY", None), ("KEYBOARD_LAYOUT", None),
    ("DB_PASSWORD_FILE", None), ("TOKEN_PATH", None), ("SECRET_ID", None), ("monkey", None),
    ("org.opencontainers.image.source", None), ("PIP_INDEX_URL", None),
])
def test_credential_names(name: str, word: str | None) -> None:
    assert redact.credential_word(name) == word


@pytest.mark.parametrize(("text", "kind"), list(TOKENS.items()))
def test_token_shapes_are_found_inside_text(text: str, kind: str) -> None:
    found = redact.find_tokens(f"RUN curl -H 'X: {text}' https://example.com")
    assert [m.kind for m in found] == [kind]


@pytest.mark.parametrize("text", [
    "sha256:" + "a" * 64, "/var/lib/apt/lists/*", "https://pypi.org/simple",
    "https://user:${PIP_PASSWORD}@pypi.example.com/simple", "https://user@host/x",
    "glpat-short", "eyJub3QiOiJhIGp3dCJ9", "AKIAlowercase0000000", "ghp_tooShort",
    "registry.gitlab.com/group/project/image:p-123", "-----BEGIN CERTIFICATE-----",
])
def test_ordinary_text_is_not_a_token(text: str) -> None:
    assert redact.find_tokens(text) == []


def test_redact_keeps_the_url_but_not_the_password() -> None:
    text = f"pip install --index-url {URL_PASSWORD} x; echo {GLPAT}; {JWT}"
    redacted = redact.redact_tokens(text)
    assert redacted == ("pip install --index-url https://deploy:[MASKED]@pypi.example.com/simple"
                        " x; echo [MASKED]; [MASKED]")


CONTAINERFILE = f"""\
FROM registry.example/base:latest
ARG NPM_TOKEN
ARG GH_TOKEN={GHP}
ARG HARMLESS=1
ENV DB_PASSWORD=hunter22 \\
    OTHER=1
ENV LEGACY_SECRET some value here
ENV DB_PASSWORD_FILE=/run/secrets/db TOKENIZER=bert
LABEL maintainer="team" com.example.key="{GLPAT}"
RUN --mount=type=secret,id=npm NPM_TOKEN=$(cat /run/secrets/npm) npm ci
RUN curl -H "PRIVATE-TOKEN: {GLPAT}" \\
    https://gitlab.example.com/api/v4/projects
RUN <<EOF
echo {AKIA} > /creds
EOF
ENV EMPTY_TOKEN=""
"""


def test_containerfile_findings_name_file_line_and_never_the_value() -> None:
    findings = credentials.check_containerfile(CONTAINERFILE, "/w/.kiln/build/app/Containerfile")
    text = [str(f) for f in findings]
    assert [(f.where.rsplit(":", 1)[1], f.name) for f in findings] == [
        ("3 ARG", "GH_TOKEN"), ("5 ENV", "DB_PASSWORD"), ("7 ENV", "LEGACY_SECRET"),
        ("9 LABEL", "com.example.key"), ("11 RUN", ""), ("13 RUN", ""),
    ]
    assert "value is a GitHub token" in text[0]
    assert "name looks like a credential ('password') and it has a value" in text[1]
    assert "contains a GitLab token" in text[4] and "contains an AWS access key id" in text[5]
    joined = "\n".join(text)
    for value in (GHP, GLPAT, AKIA, "hunter22", "some value here"):
        assert value not in joined


def test_heredoc_bodies_are_checked_and_comments_inside_continuations_are_dropped() -> None:
    """The check reads the Containerfile as the build does (kiln.containerfile), heredoc bodies
    included: their text is stored in the image history."""
    text = ("FROM x\n"
            "COPY <<EOF /notes\n"
            "FROM evil/img\n"
            f"{GHP}\n"
            "EOF\n"
            "ENV A=1 \\\n"
            "# note: set by CI\n"
            "    DB_PASSWORD=hunter22\n"
            "RUN true\n")
    findings = credentials.check_containerfile(text, "C")
    assert [(f.where, f.name, f.reason.split(" (")[0]) for f in findings] == [
        ("C:2 COPY", "", "contains a GitHub token"),
        ("C:6 ENV", "DB_PASSWORD", "name looks like a credential"),
    ]


def test_allow_list_and_arg_values_from_build_args() -> None:
    text = "FROM x\nENV SECRET_SAUCE=ketchup-and-mayo\n"
    assert len(credentials.check_containerfile(text, "C")) == 1
    assert credentials.check_containerfile(text, "C", allow=["secret_sauce"]) == []
    # the allow list is for names only: a token shape is never allowed
    assert len(credentials.check_build_args({"SECRET_SAUCE": GLPAT}, allow=["SECRET_SAUCE"])) == 1
    args = credentials.check_build_args({"NPM_TOKEN": "abcdefgh", "REGISTRY": "127.0.0.1:5000",
                                     "BASE_IMAGE_TAG": "p-7", "EMPTY_PASSWORD": ""})
    assert [f.name for f in args] == ["NPM_TOKEN"]


def test_check_build_inputs_refuses_with_a_pointer_to_build_secrets() -> None:
    with pytest.raises(credentials.SecretInImage) as info:
        credentials.check_build_inputs("app", CONTAINERFILE, "C", {"NPM_TOKEN": "abcdefgh"})
    err = info.value
    assert isinstance(err, InputError) and err.exit_code == 2
    assert ("refusing to build app; nothing was built or pushed: 7 credential-looking value(s)"
            in err.message)
    assert err.hint is not None
    assert "RUN --mount=type=secret" in err.hint and "build-secrets" in err.hint
    credentials.check_build_inputs("app", "FROM x\nRUN true\n", "C", {"REGISTRY": "r"})  # clean


def oci_config(env: list[str], labels: dict[str, str], history: list[str]) -> dict[str, object]:
    return {"architecture": "amd64", "os": "linux",
            "config": {"Env": env, "Labels": labels},
            "history": [{"created_by": h, "empty_layer": True} for h in history]}


def test_scan_config_env_labels_and_history() -> None:
    config = oci_config(
        ["PATH=/usr/bin:/bin", "DB_PASSWORD=hunter22"],
        {"io.buildah.version": "1.28.2", "token": GLPAT},
        ["/bin/sh -c #(nop) ENV DB_PASSWORD=hunter22",
         "/bin/sh -c #(nop) ARG NPM_TOKEN",
         "|2 NPM_TOKEN=abcdefgh OTHER=x /bin/sh -c npm ci",
         f"/bin/sh -c echo {JWT} > /x",
         "/bin/sh -c #(nop) COPY file:abc in /f "])
    findings = credentials.scan_config(config, image="reg/app:p-1")
    summary = [(f.where, f.name) for f in findings]
    assert summary == [
        ("reg/app:p-1 config Env", "DB_PASSWORD"),
        ("reg/app:p-1 config Labels", "token"),
        ("reg/app:p-1 history step 3 (build arg of a RUN step)", "NPM_TOKEN"),
        ("reg/app:p-1 history step 4", ""),
    ]
    assert all(v not in "\n".join(map(str, findings)) for v in ("hunter22", GLPAT, JWT))


def test_scan_config_docker_shape_and_clean_image() -> None:
    docker = {"container_config": {"Env": [f"AWS_KEY_ID={AKIA}"]}, "history": []}
    assert [f.reason for f in credentials.scan_config(docker)] == ["value is an AWS access key id"]
    clean = oci_config(["PATH=/bin", "LANG=C.UTF-8"], {"org.opencontainers.image.revision": "abc"},
                       ["/bin/sh -c apt-get update", "|1 BASE_IMAGE_TAG=p-7 /bin/sh -c true"])
    assert credentials.scan_config(clean) == []
    with pytest.raises(credentials.SecretInImage, match="refusing to push x: its config"):
        credentials.check_built_image("x", oci_config([f"T={GHP}"], {}, []))


@pytest.mark.parametrize(("spec", "ok"), [
    ("id=npm,env=NPM_TOKEN", True), ("id=pip,src=/run/pip.conf", True),
    ("id=npm", False), ("id=npm,env=A,src=/b", False), ("npm", False), ("id=a b,env=X", False),
    ("id=npm,envv=X", False),
])
def test_build_secret_specs(spec: str, ok: bool) -> None:
    if ok:
        assert credentials.parse_build_secret(spec)["id"]
    else:
        with pytest.raises(InputError):
            credentials.parse_build_secret(spec)


# -- adapters against real tools -----------------------------------------------------------------

@pytest.mark.real
def test_scan_an_image_built_by_buildah(tmp_path: Path, buildah_storage: dict[str, Path]) -> None:
    require_tool("buildah", "buildah")
    from kiln.buildah import Buildah

    context = tmp_path / "ctx"
    context.mkdir()
    (context / "f").write_text("x\n")
    (context / "Containerfile").write_text(
        f"FROM scratch\nARG NPM_TOKEN\nENV API_TOKEN=abcdefgh123\nLABEL k=\"{GLPAT}\"\nCOPY f /f\n")
    buildah = Buildah(buildah_storage["root"], buildah_storage["runroot"], "vfs")
    buildah.run("build", "--isolation", "chroot", "--format", "docker", "--build-arg",
                "NPM_TOKEN=zzzzzzzz", "-t", "localhost/kiln-secret-scan", str(context))
    try:
        findings = image_scan.scan_local_image(buildah, "localhost/kiln-secret-scan")
    finally:
        buildah.run("rmi", "localhost/kiln-secret-scan", check=False)
    assert {(f.name, f.where.rsplit(" ", 2)[-2:][0]) for f in findings} >= {
        ("API_TOKEN", "config"), ("k", "config")}
    assert "abcdefgh123" not in json.dumps([str(f) for f in findings])


@pytest.mark.real
def test_scan_an_image_and_an_index_in_a_registry(tmp_path: Path,
                                                   registry: RegistryServer) -> None:
    require_tool("skopeo", "skopeo")
    host = registry.address
    push_test_image(tmp_path, f"{host}/app:p-5-amd64", arch="amd64", label="clean")
    push_test_image(tmp_path, f"{host}/app:p-5-arm64", arch="arm64", label=GLPAT)
    with RegistryClient(host) as client:
        reg = promote.Registry(client, "app")
        promote.assemble_index(reg, CIContext(pipeline_id="5"), ("amd64", "arm64"))
        assert image_scan.scan_registry_image(client, "app", "p-5-amd64") == []
        findings = image_scan.scan_registry_image(client, "app", "p-5")
    assert [(f.name, f.reason) for f in findings] == [("test", "value is a GitLab token")]
    assert "[linux/arm64]" in findings[0].where


# -- auth files kiln writes: 0600, in a private folder, gone afterwards --------------------------

SPY = """#!/bin/sh
# records the auth files skopeo is given, then runs the real skopeo
prev=""
for arg in "$@"; do
  case "$prev" in
    --authfile|--src-authfile|--dest-authfile)
      printf '%s %s %s\\n' "$(stat -c %a "$arg")" "$(stat -c %a "$(dirname "$arg")")" "$arg" \\
        >> "$KILN_SPY_LOG" ;;
  esac
  prev="$arg"
done
exec {real} "$@"
"""


@pytest.mark.real
def test_auth_files_are_private_and_deleted_after_real_copies(tmp_path: Path,
                                                              registry: RegistryServer) -> None:
    """A real ``tag`` to a second registry (skopeo copy) and a real ``mirror``, with CI
    credentials: skopeo gets a 0600 auth file in a 0700 folder, which is gone afterwards, and
    the temporary folder kiln used is empty again."""
    import os
    import shutil

    from helpers.run import run_kiln

    real = require_tool("skopeo", "skopeo")
    spy_dir = tmp_path / "bin"
    spy_dir.mkdir()
    (spy_dir / "skopeo").write_text(SPY.replace("{real}", real))
    (spy_dir / "skopeo").chmod(0o755)
    log = tmp_path / "spy.log"
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    host = registry.address
    other = RegistryServer(tmp_path / "other")
    other.start()
    try:
        push_test_image(tmp_path, f"{host}/app:p-3")
        push_test_image(tmp_path, f"{host}/library/alpha:1", label="alpha")
        project = tmp_path / "project"
        project.mkdir()
        (project / "pyproject.toml").write_text(
            f"[tool.kiln.images.app]\ndestinations = [\"{other.address}/team\"]\n")
        (project / "mirrors.yml").write_text(f"images:\n  - {host}/library/alpha:1\n")
        env = {"PATH": f"{spy_dir}:{os.environ['PATH']}", "KILN_SPY_LOG": str(log),
               "TMPDIR": str(private_tmp), "CI": "true", "CI_PIPELINE_ID": "3",
               "IMAGE_NAME": "app", "KILN_REGISTRY": host, "CI_REGISTRY_USER": "ci",
               "CI_REGISTRY_PASSWORD": "auth-file-pw-1234"}
        tagged = run_kiln(project, "tag", env=env)
        assert tagged.returncode == 0, tagged.stderr
        mirrored = run_kiln(project, "mirror", env={**env, "KILN_REGISTRY": other.address})
        assert mirrored.returncode == 0, mirrored.stderr
    finally:
        other.stop()
    seen = [line.split(" ", 2) for line in log.read_text().splitlines()]
    assert len({path for _, _, path in seen}) == 2  # one per run (tag's copy, mirror's copies)
    for file_mode, dir_mode, path in seen:
        assert (file_mode, dir_mode) == ("600", "700"), path
        assert not Path(path).exists() and not Path(path).parent.exists()
        assert Path(path).is_relative_to(private_tmp)
    assert list(private_tmp.iterdir()) == []
    for done in (tagged, mirrored):
        assert "auth-file-pw-1234" not in done.stdout + done.stderr
    shutil.rmtree(spy_dir)


def test_auth_file_helpers_clean_up_on_errors(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The one auth-file writer (kiln.registry.access.tool_access), directly, through the skopeo
    copier (promote, mirror, seed) and through build, removes its file even when the work inside
    fails."""
    from kiln import build, proc, skopeo
    from kiln.registry import access
    from kiln.settings import Settings

    monkeypatch.setattr(proc, "which", lambda tool: tool)
    settings = Settings.resolve(tmp_path, {}, {"CI_REGISTRY_USER": "ci",
                                               "CI_REGISTRY_PASSWORD": "helper-pw-5678"},
                                {"registry": "registry.example.com/group"})
    seen: list[Path] = []

    class Boom(Exception):
        pass

    writers = [
        lambda: access.tool_access(settings, {"registry.example.com"}),
        lambda: skopeo.copier(settings, {"registry.example.com"}, retries=0),
        lambda: build.registry_access(settings, build.resolve_target(settings, None)),
    ]
    for writer in writers:
        with pytest.raises(Boom), writer() as handle:
            tools = handle.tools if isinstance(handle, skopeo.Copier) else handle
            assert tools.authfile is not None
            path = tools.authfile
            seen.append(path)
            assert path.stat().st_mode & 0o777 == 0o600
            assert path.parent.stat().st_mode & 0o777 == 0o700
            auth = json.loads(path.read_text())["auths"]["registry.example.com"]
            assert "helper-pw-5678" not in json.dumps(auth)  # base64 user:password
            raise Boom
    assert len(seen) == 3 and not any(p.exists() or p.parent.exists() for p in seen)


@pytest.mark.real
def test_build_secret_reaches_the_run_step_but_not_the_image(
        tmp_path: Path, buildah_storage: dict[str, Path]) -> None:
    """What the refusal message points to works: ``build-secrets`` becomes ``buildah build
    --secret``, the RUN step reads the value, and neither the image nor the output holds it."""
    import shutil

    from helpers.run import run_kiln
    from kiln.buildah import Buildah

    require_tool("buildah", "buildah")
    busybox = shutil.which("busybox")
    if busybox is None:
        skip_or_fail("busybox-static not installed")
    project = tmp_path / "project"
    (project / "builds").mkdir(parents=True)
    shutil.copy(busybox, project / "busybox")
    (project / "builds" / "tool.in").write_text(
        "FROM scratch\nCOPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        "RUN --mount=type=secret,id=npm wc -c < /run/secrets/npm > /secret-length\n")
    value = "npm-build-secret-4242"
    env = {"IMAGE_NAME": "tool", "KILN_REGISTRY": "registry.example.com/kiln-test",
           "KILN_PUSH": "false", "KILN_BUILD_SECRETS": "id=npm,env=NPM_TOKEN",
           "NPM_TOKEN": value, "KILN_STORAGE_DRIVER": "vfs",
           "KILN_STORAGE_ROOT": str(buildah_storage["root"]),
           "KILN_STORAGE_RUNROOT": str(buildah_storage["runroot"])}
    done = run_kiln(project, "build", env=env)
    assert done.returncode == 0, done.stderr
    assert "--secret id=npm,env=NPM_TOKEN" in run_kiln(project, "build", "--dry-run",
                                                       env=env).stdout
    assert value not in done.stdout + done.stderr
    buildah = Buildah(buildah_storage["root"], buildah_storage["runroot"], "vfs")
    ref = "registry.example.com/kiln-test/tool:p-local"
    container = buildah.run("from", "--pull=never", ref).stdout.strip()
    try:
        mount = Path(buildah.run("mount", container).stdout.strip())
        assert (mount / "secret-length").read_text().strip() == str(len(value))
        assert not (mount / "run" / "secrets" / "npm").exists()
    finally:
        buildah.run("rm", container, check=False)
    config = buildah.inspect_config(ref)
    assert value not in json.dumps(config)
    assert credentials.scan_config(config) == []
