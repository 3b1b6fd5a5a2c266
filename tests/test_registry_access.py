"""kiln.registry.access: loopback and TLS, credentials, the one auth-file writer, which registry.

Unit tests: no process, no network. The identity-token tests would have caught promote's
cross-registry copy sending an identity token as a Basic password (its own auth-file writer knew
only ``auth``); the loopback table would have caught build and the client disagreeing about
``127.0.0.2:5000`` and ``::1``.
"""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln import build, console, proc, promote, seed, skopeo
from kiln.errors import ConfigError
from kiln.local_registry import LocalRegistryState
from kiln.redact import Secret
from kiln.registry import access
from kiln.registry.auth import Credentials, auth_file_entry
from kiln.registry.client import RegistryClient
from kiln.registry.reference import ImageRef
from kiln.settings import Settings

pytestmark = pytest.mark.usefixtures("no_subprocess")

TOKEN = "identity-token-ffee0011"
PASSWORD = "ci-password-4242"


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Credentials come only from what a test writes (never this machine's auth files)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    yield home


def _settings(tmp_path: Path, env: dict[str, str] | None = None,
              flags: dict[str, object] | None = None) -> Settings:
    return Settings.resolve(tmp_path, {}, env or {}, flags or {})


def _token_file(tmp_path: Path, host: str) -> Path:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {host: {"identitytoken": TOKEN}}}))
    return path


# -- loopback and TLS --------------------------------------------------------------------------

@pytest.mark.parametrize(("registry", "loopback"), [
    ("127.0.0.1:5000", True), ("127.0.0.2:5000", True), ("127.255.0.9", True),
    ("localhost:5000", True), ("localhost", True), ("LOCALHOST:1/x", True),
    ("::1", True), ("[::1]:5000", True), ("[::1]", True), ("127.0.0.1:5000/mirror", True),
    ("10.0.0.1", False), ("10.0.0.1:5000", False), ("example.com", False),
    ("localhost.example.com/x", False), ("registry.gitlab.com/g/p", False), ("[::2]:5000", False),
    ("128.0.0.1", False),
])
def test_is_loopback(registry: str, loopback: bool) -> None:
    assert access.is_loopback(registry) is loopback


def test_one_loopback_answer_for_build_the_client_and_tools(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    for host in ("127.0.0.2:5000", "[::1]:5000"):
        assert RegistryClient(host).scheme == "http"
        assert RegistryClient.from_settings(host, settings).scheme == "http"
        assert access.plain_http(settings, host) and not access.tls_verify(settings, host)
        target = build.Target(host, f"{host}/mirror", push=True)
        assert build.tls_verify_for(settings, target) is False
    tls = _settings(tmp_path, {"KILN_LOOPBACK_TLS": "true"})
    assert access.tls_verify(tls, "127.0.0.2:5000")
    assert RegistryClient.from_settings("127.0.0.2:5000", tls).scheme == "https"
    assert not access.tls_verify(_settings(tmp_path, {"KILN_TLS_VERIFY": "0"}), "quay.io")


# -- the one auth-file writer ------------------------------------------------------------------

def test_identity_token_is_written_as_identitytoken(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {"REGISTRY_AUTH_FILE": str(_token_file(tmp_path, "quay.io"))})
    with access.tool_access(settings, {"quay.io", "127.0.0.1:5000"}) as tools:
        assert tools.authfile is not None
        assert stat.S_IMODE(tools.authfile.stat().st_mode) == 0o600
        assert stat.S_IMODE(tools.authfile.parent.stat().st_mode) == 0o700
        data = json.loads(tools.authfile.read_text())
        assert data == {"auths": {"quay.io": {"identitytoken": TOKEN}}}
    assert not tools.authfile.exists() and not tools.authfile.parent.exists()
    assert console.mask(f"x {TOKEN}") == f"x {console.MASK}"


def test_password_is_written_as_base64_auth_for_our_hosts_only(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {"CI_REGISTRY_USER": "ci", "CI_REGISTRY_PASSWORD": PASSWORD},
                         {"registry": "registry.example.com/group"})
    with access.tool_access(settings, {"registry.example.com", "quay.io"}) as tools:
        assert tools.authfile is not None
        auths = json.loads(tools.authfile.read_text())["auths"]
    assert set(auths) == {"registry.example.com"}
    assert base64.b64decode(auths["registry.example.com"]["auth"]).decode() == f"ci:{PASSWORD}"
    assert auth_file_entry(Credentials("<token>", Secret(TOKEN))) == {"identitytoken": TOKEN}


def test_nothing_written_without_credentials_and_files_gone_after_errors(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with access.tool_access(settings, {"quay.io"}) as tools:
        assert tools == access.ToolAccess(None, None)
    ci = _settings(tmp_path, {"CI_REGISTRY_USER": "ci", "CI_REGISTRY_PASSWORD": PASSWORD},
                   {"registry": "registry.example.com/group"})

    class Boom(Exception):
        pass

    seen: list[Path] = []
    with pytest.raises(Boom), access.tool_access(ci, {"registry.example.com"}) as tools:
        assert tools.authfile is not None
        seen.append(tools.authfile)
        raise Boom
    assert not seen[0].exists() and not seen[0].parent.exists()


def test_build_keeps_the_configured_auth_file(tmp_path: Path) -> None:
    """buildah's FROM lines may name any registry: the configured file's entries stay, and the
    file passes through as it is when there is nothing to add."""
    configured = tmp_path / "configured.json"
    configured.write_text(json.dumps({"auths": {"ghcr.io": {"auth": "Z2g6cA=="}}}))
    plain = _settings(tmp_path, {"REGISTRY_AUTH_FILE": str(configured)})
    target = build.Target("quay.io/org", "docker.io", push=True)
    with build.registry_access(plain, target) as tools:
        assert tools.authfile == configured
    ci = _settings(tmp_path, {"REGISTRY_AUTH_FILE": str(configured), "CI_REGISTRY_USER": "ci",
                              "CI_REGISTRY_PASSWORD": PASSWORD}, {"registry": "quay.io/org"})
    with build.registry_access(ci, target) as tools:
        assert tools.authfile is not None and tools.authfile != configured
        assert set(json.loads(tools.authfile.read_text())["auths"]) == {"ghcr.io", "quay.io"}
    planned = access.planned_tool_access(ci, build.registry_hosts(ci, target),
                                         keep_auth_file=True)
    assert planned.authfile == access.PLANNED_AUTH_FILE


def test_ca_bundle_becomes_a_cert_dir(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    settings = _settings(tmp_path, {"KILN_CA_BUNDLE": str(bundle)})
    with access.tool_access(settings, {"quay.io"}) as tools:
        assert tools.cert_dir is not None
        assert (tools.cert_dir / "ca.crt").read_text() == bundle.read_text()
    assert not tools.cert_dir.exists()


# -- every consumer writes through the one writer ----------------------------------------------

class CapturedCopy:
    """Stands in for running skopeo: records the argv and the auth file as it was."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []
        self.auths: list[dict[str, object]] = []

    def __call__(self, argv: list[str], what: str) -> None:
        self.argvs.append(argv)
        for flag in ("--dest-authfile", "--src-authfile"):
            if flag in argv:
                self.auths.append(json.loads(Path(argv[argv.index(flag) + 1]).read_text()))
                break


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> CapturedCopy:
    copy = CapturedCopy()
    monkeypatch.setattr(skopeo, "run_copy", copy)
    monkeypatch.setattr(proc, "which", lambda tool: tool)
    return copy


def test_promote_mirror_seed_and_build_send_identity_tokens_as_identitytoken(
        tmp_path: Path, captured: CapturedCopy) -> None:
    host = "registry.example.com"
    settings = _settings(tmp_path, {"REGISTRY_AUTH_FILE": str(_token_file(tmp_path, host))})
    expected = {"auths": {host: {"identitytoken": TOKEN}}}
    digest = "sha256:" + "a" * 64
    # promote's cross-registry copy
    promote.copy_between(settings, promote.Destination("127.0.0.1:5000", "app"), digest,
                         promote.Destination(host, "team/app"), "g-1", dry_run=False,
                         log=lambda op: None)
    # mirror's copier
    with skopeo.copier(settings, {"docker.io", host}) as copier:
        copier.copy(ImageRef("docker.io", "library/x", None, digest), ImageRef(host, "m/x", "1"))
    # seed's push of a cached image
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "manifest.json").write_text("{}")
    seed._copy_to_registry(seed._Context(settings, host, tmp_path), layout, f"{host}/mirror/x:1")
    assert len(captured.auths) == 3
    assert all(auth == expected for auth in captured.auths)
    # buildah's auth file
    with build.registry_access(settings, build.Target(f"{host}/g", "docker.io", True)) as tools:
        assert tools.authfile is not None
        assert json.loads(tools.authfile.read_text())["auths"][host] == {"identitytoken": TOKEN}


# -- which registry ----------------------------------------------------------------------------

def test_configured_registry_wins_and_ci_needs_one(tmp_path: Path) -> None:
    chosen = access.target_registry(_settings(tmp_path, flags={"registry": "quay.io/org"}))
    assert chosen == access.TargetRegistry("quay.io/org", local=False)
    ci = _settings(tmp_path, {"CI": "true", "CI_PIPELINE_ID": "1",
                              "CI_REGISTRY_IMAGE": "registry.gitlab.com/g/p"})
    assert access.target_registry(ci).prefix == "registry.gitlab.com/g/p"
    with pytest.raises(ConfigError, match="no registry configured in CI"):
        access.target_registry(_settings(tmp_path, {"CI": "true", "CI_PIPELINE_ID": "1"}))


def test_embedded_registry_started_only_when_used(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Path] = []

    def start(state_dir: Path) -> LocalRegistryState:
        started.append(state_dir)
        return LocalRegistryState(1, "127.0.0.1:4321", str(state_dir))

    monkeypatch.setattr(access, "local_registry_status", lambda state_dir: None)
    monkeypatch.setattr(access, "start_local_registry", start)
    dry = _settings(tmp_path, flags={"dry_run": True})
    assert access.target_registry(dry) == access.TargetRegistry(None, local=True)
    assert access.target_registry(_settings(tmp_path), start=False).prefix is None
    assert started == []
    assert access.target_registry(_settings(tmp_path)).prefix == "127.0.0.1:4321"
    assert len(started) == 1
