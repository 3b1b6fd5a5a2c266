"""Authentication against real registries: TLS + htpasswd Basic auth (self-signed CA made here),
and the Bearer token flow with a token service run by the test. Secrets never reach output."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_tool
from helpers.images import push_test_image
from helpers.run import run_kiln
from helpers.secure import (
    Pki,
    TokenService,
    cert_dir,
    iter_outputs,
    make_pki,
    tls_http_config,
    write_htpasswd,
)
from kiln.errors import RegistryAuthError, RegistryError
from kiln.local_registry import RegistryServer
from kiln.redact import Secret
from kiln.registry.auth import Credentials
from kiln.registry.client import RegistryClient

pytestmark = pytest.mark.real

PASSWORD = "Pa55-w0rd-never-printed"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RegistryServer]:
    """A TLS registry with htpasswd auth (user kiln), holding app:p-100."""
    require_tool("docker-registry", "docker-registry")
    require_tool("skopeo", "skopeo")
    tmp = tmp_path_factory.mktemp("tls-registry")
    htpasswd = write_htpasswd(tmp / "htpasswd", {"kiln": PASSWORD})
    server = RegistryServer(tmp / "registry", extra_config={
        "http": tls_http_config(pki),
        "auth": {"htpasswd": {"realm": "kiln-test", "path": str(htpasswd)}},
    })
    host = server.start()
    certs = cert_dir(pki, tmp / "certs")
    push_test_image(tmp, f"{host}/app:p-100", extra=(
        "--dest-cert-dir", str(certs), "--dest-creds", f"kiln:{PASSWORD}"))
    yield server
    server.stop()


def tls_env(server: RegistryServer, pki: Pki, **extra: str) -> dict[str, str]:
    env = {"KILN_REGISTRY": server.address, "KILN_LOOPBACK_TLS": "true",
           "KILN_CA_BUNDLE": str(pki.ca_cert), "CI": "true", "CI_PIPELINE_ID": "100",
           "IMAGE_NAME": "app", "HOME": str(pki.ca_cert.parent)}
    env.update(extra)
    return env


def test_basic_auth_over_tls_tag_and_stop_mr(tmp_path: Path, tls_registry: RegistryServer,
                                             pki: Pki) -> None:
    env = tls_env(tls_registry, pki, CI_REGISTRY_USER="kiln", CI_REGISTRY_PASSWORD=PASSWORD,
                  CI_MERGE_REQUEST_IID="5")
    tagged = run_kiln(tmp_path, "tag", env=env)
    assert tagged.returncode == 0, tagged.stderr
    with RegistryClient(tls_registry.address, scheme="https", ca_bundle=pki.ca_cert,
                        credentials=Credentials("kiln", Secret(PASSWORD))) as client:
        source = client.head_manifest("app", "p-100")
        assert source is not None
        assert client.head_manifest("app", "g-100") == source
        assert client.head_manifest("app", "mr-5") == source
    stopped = run_kiln(tmp_path, "stop-mr", env=env)
    assert stopped.returncode == 0, stopped.stderr
    with RegistryClient(tls_registry.address, scheme="https", ca_bundle=pki.ca_cert,
                        credentials=Credentials("kiln", Secret(PASSWORD))) as client:
        assert client.head_manifest("app", "mr-5") is None
        assert client.head_manifest("app", "g-100") == source
    for text in iter_outputs(tagged, stopped):
        assert PASSWORD not in text


def test_credentials_from_an_auth_file(tmp_path: Path, tls_registry: RegistryServer,
                                       pki: Pki) -> None:
    auth = tmp_path / "auth.json"
    entry = base64.b64encode(f"kiln:{PASSWORD}".encode()).decode()
    auth.write_text(json.dumps({"auths": {tls_registry.address: {"auth": entry}}}))
    proc = run_kiln(tmp_path, "deploy-production",
                    env=tls_env(tls_registry, pki, REGISTRY_AUTH_FILE=str(auth)))
    assert proc.returncode == 0, proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr and entry not in proc.stdout + proc.stderr


def test_wrong_password_is_a_clear_auth_error(tmp_path: Path, tls_registry: RegistryServer,
                                              pki: Pki) -> None:
    wrong = "Wr0ng-pa55word-secret"
    proc = run_kiln(tmp_path, "tag", env=tls_env(tls_registry, pki, CI_REGISTRY_USER="kiln",
                                                 CI_REGISTRY_PASSWORD=wrong))
    assert proc.returncode == 3
    text = proc.stderr
    assert f"registry {tls_registry.address} refused 'read manifest p-100' on repository app" in text
    assert "as user 'kiln'" in text and "ask the maintainers" in text
    assert wrong not in proc.stdout + text


def test_no_credentials_is_a_clear_auth_error(tmp_path: Path, tls_registry: RegistryServer,
                                              pki: Pki) -> None:
    proc = run_kiln(tmp_path, "tag", env=tls_env(tls_registry, pki))
    assert proc.returncode == 3
    assert "without credentials" in proc.stderr and "repository app" in proc.stderr


def test_untrusted_certificate_is_not_retried(tls_registry: RegistryServer) -> None:
    attempts: list[float] = []
    with RegistryClient(tls_registry.address, scheme="https", sleep=attempts.append) as client:
        with pytest.raises(RegistryError, match="TLS certificate verification failed") as info:
            client.head_manifest("app", "p-100")
    assert "KILN_CA_BUNDLE" in str(info.value)
    assert attempts == []


# -- Bearer token flow ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory,
                   pki: Pki) -> Iterator[tuple[RegistryServer, TokenService]]:
    require_tool("docker-registry", "docker-registry")
    require_tool("skopeo", "skopeo")
    tmp = tmp_path_factory.mktemp("token-registry")
    service = TokenService(pki, users={
        "writer": ("writer-" + PASSWORD, {"pull", "push", "delete"}),
        "reader": ("reader-" + PASSWORD, {"pull"}),
    }).start()
    server = RegistryServer(tmp / "registry", extra_config={"auth": service.registry_auth()})
    host = server.start()
    push_test_image(tmp, f"{host}/team/app:p-100",
                    extra=("--dest-tls-verify=false", "--dest-creds", f"writer:writer-{PASSWORD}"))
    yield server, service
    server.stop()
    service.stop()


def token_env(server: RegistryServer, user: str | None, **extra: str) -> dict[str, str]:
    env = {"KILN_REGISTRY": f"{server.address}/team", "CI": "true", "CI_PIPELINE_ID": "100",
           "IMAGE_NAME": "app", "HOME": "/nonexistent"}
    if user:
        env.update(CI_REGISTRY_USER=user, CI_REGISTRY_PASSWORD=f"{user}-{PASSWORD}")
    env.update(extra)
    return env


def test_bearer_flow_tag_and_stop_mr(tmp_path: Path,
                                     token_registry: tuple[RegistryServer, TokenService]) -> None:
    server, service = token_registry
    service.requests.clear()
    env = token_env(server, "writer", CI_COMMIT_BRANCH="main", CI_DEFAULT_BRANCH="main",
                    CI_MERGE_REQUEST_IID="7")
    mark = server.log_mark()
    tagged = run_kiln(tmp_path, "tag", env=env)
    assert tagged.returncode == 0, tagged.stderr
    # one token for the GET, one (pull,push) reused by all three PUTs
    assert [r["scope"] for r in service.requests] == [["repository:team/app:pull"],
                                                      ["repository:team/app:pull,push"]]
    statuses = [(r.method, r.status) for r in server.requests_since(mark) if r.kind == "manifest"]
    assert statuses == [("GET", 401), ("GET", 200), ("PUT", 201), ("PUT", 201), ("PUT", 201)]
    stopped = run_kiln(tmp_path, "stop-mr", env=env)
    assert stopped.returncode == 0, stopped.stderr
    creds = Credentials("writer", Secret(f"writer-{PASSWORD}"))
    with RegistryClient(server.address, credentials=creds) as client:
        tags = set(client.list_tags("team/app"))
    assert tags >= {"p-100", "g-100", "latest"} and "mr-7" not in tags
    for text in iter_outputs(tagged, stopped):
        assert PASSWORD not in text
        for token in service.issued:
            assert token not in text


def test_bearer_read_only_user_cannot_tag(tmp_path: Path,
                                          token_registry: tuple[RegistryServer, TokenService]) -> None:
    server, _ = token_registry
    mark = server.log_mark()
    proc = run_kiln(tmp_path, "deploy-production", env=token_env(server, "reader"))
    assert proc.returncode == 3
    assert (f"registry {server.address} refused 'write manifest production' on repository "
            "team/app as user 'reader'") in proc.stderr
    assert "pull,push access" in proc.stderr
    assert not [r for r in server.requests_since(mark) if r.method == "PUT" and r.status < 300]


def test_bearer_anonymous_and_bad_password(tmp_path: Path,
                                           token_registry: tuple[RegistryServer, TokenService]) -> None:
    server, _ = token_registry
    anon = run_kiln(tmp_path, "tag", env=token_env(server, None))
    assert anon.returncode == 3 and "without credentials" in anon.stderr
    bad = run_kiln(tmp_path, "tag", env=token_env(server, "writer",
                                                  CI_REGISTRY_PASSWORD="nope-nope-nope"))
    assert bad.returncode == 3 and "token service refused" in bad.stderr
    assert "nope-nope-nope" not in bad.stdout + bad.stderr


def test_bearer_client_api_caches_tokens(token_registry: tuple[RegistryServer, TokenService]) -> None:
    server, service = token_registry
    creds = Credentials("writer", Secret(f"writer-{PASSWORD}"))
    with RegistryClient(server.address, credentials=creds) as client:
        service.requests.clear()
        for _ in range(3):
            assert client.head_manifest("team/app", "p-100") is not None
        assert client.list_tags("team/app")
        assert len(service.requests) == 1
        with pytest.raises(RegistryAuthError):
            RegistryClient(server.address).get_manifest("team/app", "p-100")
