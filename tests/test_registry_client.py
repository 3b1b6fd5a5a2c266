"""The registry client: pure parts (references, challenges, auth files, media, planning) without
I/O, then the client against a real plain-HTTP docker-registry with images pushed by skopeo."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.images import push_test_image, skopeo
from kiln import console
from kiln.ci_context import CIContext
from kiln.errors import (
    ConfigError,
    InputError,
    RegistryAuthError,
    RegistryError,
    RegistryTransientError,
)
from kiln.local_registry import RegistryServer
from kiln.promote import Child, Destination, destinations_for, plan_index
from kiln.redact import Secret
from kiln.registry import media
from kiln.registry.access import credentials_for, credentials_from_files, is_loopback
from kiln.registry.auth import (
    Credentials,
    actions_for,
    credentials_from_auth_data,
    default_auth_files,
    parse_challenge,
    scope_for,
)
from kiln.registry.client import RegistryClient, _retry_after
from kiln.registry.media import Manifest, RateLimit
from kiln.registry.reference import ImageRef, parse_reference
from kiln.settings import ImageSettings, Settings

# -- references ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", ImageRef("docker.io", "library/busybox")),
        ("postgres:alpine", ImageRef("docker.io", "library/postgres", "alpine")),
        ("bitnami/redis:7", ImageRef("docker.io", "bitnami/redis", "7")),
        ("quay.io/org/img:v1", ImageRef("quay.io", "org/img", "v1")),
        ("127.0.0.1:5000/app:p-1-arm64", ImageRef("127.0.0.1:5000", "app", "p-1-arm64")),
        ("localhost/app", ImageRef("localhost", "app")),
        ("registry.gitlab.com/g/sub/p/backend:latest@sha256:" + "a" * 64,
         ImageRef("registry.gitlab.com", "g/sub/p/backend", "latest", "sha256:" + "a" * 64)),
        ("[::1]:5000/x@sha256:" + "b" * 64, ImageRef("[::1]:5000", "x", None, "sha256:" + "b" * 64)),
    ],
)
def test_parse_reference(text: str, expected: ImageRef) -> None:
    ref = parse_reference(text)
    assert ref == expected
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize("bad", ["", "UPPER/case", "host:5000/app:bad/tag", "app@sha256:short",
                                 "a//b", "app:-x", "quay.io/org/img:" + "x" * 129])
def test_parse_reference_rejects(bad: str) -> None:
    with pytest.raises(InputError):
        parse_reference(bad)


def test_reference_helpers() -> None:
    ref = parse_reference("alpine:3")
    assert ref.api_host == "registry-1.docker.io"
    assert ref.reference == "3"
    assert ref.with_tag("edge").tag == "edge"
    assert parse_reference("x/y").reference == "latest"


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1:5000") and is_loopback("localhost") and is_loopback("[::1]:1")
    assert not is_loopback("registry.example.com") and not is_loopback("10.0.0.1:5000")
    assert RegistryClient("127.0.0.1:5000").scheme == "http"
    assert RegistryClient("quay.io").scheme == "https"
    assert RegistryClient("127.0.0.1:5000", scheme="https").scheme == "https"
    assert RegistryClient("docker.io").api_host == "registry-1.docker.io"


# -- challenges, scopes, credentials ------------------------------------------------------


def test_parse_bearer_challenge() -> None:
    ch = parse_challenge('Bearer realm="https://auth.example/token",service="registry.example",'
                         'scope="repository:a/b:pull,push"')
    assert ch is not None and ch.scheme == "bearer"
    assert ch.realm == "https://auth.example/token"
    assert ch.service == "registry.example"
    assert ch.scope == "repository:a/b:pull,push"
    basic = parse_challenge('Basic realm="Registry Realm"')
    assert basic is not None and basic.scheme == "basic" and basic.realm == "Registry Realm"
    assert parse_challenge("") is None


def test_scopes_and_actions() -> None:
    assert actions_for("GET") == actions_for("HEAD") == {"pull"}
    assert actions_for("PUT") == actions_for("POST") == {"pull", "push"}
    assert actions_for("DELETE") == {"delete"}
    assert scope_for("a/b", frozenset({"delete", "pull", "push"})) == "repository:a/b:pull,push,delete"


def test_credentials_never_show_the_password() -> None:
    creds = Credentials("ci-user", Secret("s3cr3t-value"), "test")
    assert "s3cr3t-value" not in repr(creds)
    assert "s3cr3t-value" not in repr(RegistryClient("quay.io", credentials=creds))
    assert console.mask("token s3cr3t-value") == f"token {console.MASK}"


def _auth_entry(user: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_auth_file_lookup_most_specific_wins() -> None:
    data = {"auths": {
        "quay.io": _auth_entry("org-bot", "p1"),
        "quay.io/org/special": _auth_entry("special-bot", "p2"),
        "https://index.docker.io/v1/": _auth_entry("hubber", "p3"),
        "registry.example:5000": {"username": "u", "password": "p4"},
    }}
    assert credentials_from_auth_data(data, "quay.io", "org/app").username == "org-bot"
    assert credentials_from_auth_data(data, "quay.io", "org/special/x").username == "special-bot"
    assert credentials_from_auth_data(data, "registry-1.docker.io", "library/x").username == "hubber"
    found = credentials_from_auth_data(data, "registry.example:5000")
    assert found is not None and str(found.password) == "p4"
    assert credentials_from_auth_data(data, "ghcr.io") is None


def test_auth_file_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "auth.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="auth.json"):
        credentials_from_files([bad], "quay.io")
    bad.write_text(json.dumps({"auths": {"quay.io": {"auth": "!!!"}}}))
    with pytest.raises(ConfigError, match="base64") as info:
        credentials_from_files([bad], "quay.io")
    assert "!!!" not in str(info.value)
    assert credentials_from_files([tmp_path / "missing.json"], "quay.io") is None


def test_default_auth_file_order(tmp_path: Path) -> None:
    env = {"REGISTRY_AUTH_FILE": "/a.json", "XDG_RUNTIME_DIR": "/run/u", "HOME": "/home/u"}
    assert default_auth_files(env) == [
        Path("/a.json"), Path("/run/u/containers/auth.json"),
        Path("/home/u/.config/containers/auth.json"), Path("/home/u/.docker/config.json")]


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings.resolve(tmp_path, {}, {}, {}).replace(**kw)


def test_settings_credentials_only_for_own_registry(tmp_path: Path) -> None:
    settings = _settings(tmp_path, registry="registry.gitlab.com/g/p", registry_user="gitlab-ci-token",
                         registry_password=Secret("job-token-123"),
                         ci=CIContext(registry="registry.gitlab.com"))
    env = {"HOME": str(tmp_path)}
    own = credentials_for("registry.gitlab.com", settings, env)
    assert own is not None and own.username == "gitlab-ci-token"
    assert credentials_for("quay.io", settings, env) is None  # never sent to another host
    docker = tmp_path / ".docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"auths": {"quay.io": _auth_entry("bot", "pw")}}))
    other = credentials_for("quay.io", settings, env)
    assert other is not None and other.username == "bot" and other.source.endswith("config.json")


# -- small pure helpers ---------------------------------------------------------------------


def test_ratelimit_and_retry_after() -> None:
    rl = RateLimit.from_headers({"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "76;w=21600"})
    assert rl == RateLimit(100, 76, 21600)
    assert RateLimit.from_headers({}) is None
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_manifest_digest_is_over_exact_bytes() -> None:
    body = b'{"schemaVersion": 2,  "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}'
    m = Manifest.from_bytes(body)
    assert m.media_type == media.OCI_INDEX
    assert m.digest == media.digest_of(body)
    assert m.digest != media.digest_of(json.dumps(json.loads(body)).encode())


def _child(arch: str, config_arch: str, media_type: str = media.DOCKER_MANIFEST,
           **extra: str) -> Child:
    body = json.dumps({"schemaVersion": 2, "mediaType": media_type, "arch": arch}).encode()
    return Child(arch, f"p-1-{arch}", Manifest.from_bytes(body, media_type),
                 {"architecture": config_arch, "os": "linux", **extra})


def test_plan_index_docker_list_with_platforms() -> None:
    children = [_child("amd64", "amd64"), _child("arm64", "arm64", variant="v8")]
    index = plan_index(children, "reg/app")
    assert index.media_type == media.DOCKER_MANIFEST_LIST
    entries = media.index_children(index.body)
    assert [e.digest for e in entries] == [c.manifest.digest for c in children]
    assert [e.size for e in entries] == [len(c.manifest.body) for c in children]
    assert entries[1].platform == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert index.digest == media.digest_of(index.body)


def test_plan_index_oci_children_give_oci_index() -> None:
    index = plan_index([_child("amd64", "amd64", media.OCI_MANIFEST)], "reg/app")
    assert index.media_type == media.OCI_INDEX


def test_plan_index_refuses_mislabelled_arch() -> None:
    with pytest.raises(InputError, match="mislabelled.*'amd64'.*'arm64'"):
        plan_index([_child("arm64", "amd64")], "reg/app")
    with pytest.raises(InputError, match="no architectures"):
        plan_index([], "reg/app")


def test_destinations(tmp_path: Path) -> None:
    base = _settings(tmp_path)
    assert destinations_for(base, "app", "127.0.0.1:5000") == [Destination("127.0.0.1:5000", "app")]
    multi = base.replace(images={"app": ImageSettings(
        destinations=("registry.gitlab.com/g/p", "quay.io/org"))})
    assert [d.name for d in destinations_for(multi, "app", "x:1")] == [
        "registry.gitlab.com/g/p/app", "quay.io/org/app"]
    private = base.replace(images={"app": ImageSettings(
        destinations=("registry.gitlab.com/g/p", "quay.io/org"), private=True)})
    with pytest.raises(ConfigError, match="private.*quay.io"):
        destinations_for(private, "app", "x:1")
    hub = base.replace(images={"app": ImageSettings(destinations=("index.docker.io/me",),
                                                    private=True)})
    with pytest.raises(ConfigError, match="private"):
        destinations_for(hub, "app", "x:1")


# -- against a real registry -------------------------------------------------------------


# -- the HTTP flows against an injected transport (fast: no server, no sleeping) -----------------

def _mock_client(handler: Callable[[httpx.Request], httpx.Response], sleeps: list[float],
                 **kwargs: Any) -> RegistryClient:
    return RegistryClient("registry.example.com", transport=httpx.MockTransport(handler),
                          sleep=sleeps.append, **kwargs)


MANIFEST = b'{"schemaVersion":2,"mediaType":"' + media.OCI_MANIFEST.encode() + b'"}'


def test_retries_5xx_and_429_then_succeeds_honouring_retry_after() -> None:
    answers = [httpx.Response(503), httpx.Response(429, headers={"Retry-After": "7"}),
               httpx.Response(200, content=MANIFEST,
                              headers={"Content-Type": media.OCI_MANIFEST})]
    sleeps: list[float] = []
    with _mock_client(lambda request: answers.pop(0), sleeps) as client:
        manifest = client.get_manifest("team/app", "v1")
        assert manifest.body == MANIFEST and client.request_count == 3
    assert len(sleeps) == 2 and sleeps[1] == 7.0


def test_gives_up_after_max_attempts_and_never_retries_a_404() -> None:
    sleeps: list[float] = []
    with _mock_client(lambda request: httpx.Response(502), sleeps, max_attempts=3) as client:
        with pytest.raises(RegistryTransientError, match="after 3 attempts"):
            client.get_manifest("team/app", "v1")
    assert len(sleeps) == 2
    with _mock_client(lambda request: httpx.Response(404), sleeps) as client:
        assert client.head_manifest("team/app", "v1") is None
        assert client.request_count == 1


def test_bearer_flow_fetches_a_scoped_token_once_and_sends_it() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("Authorization")))
        if request.url.host == "auth.example.com":
            assert request.url.params["scope"] == "repository:team/app:pull"
            assert request.url.params["service"] == "registry"
            return httpx.Response(200, json={"token": "bearer-token-xyz", "expires_in": 300})
        if request.headers.get("Authorization") != "Bearer bearer-token-xyz":
            return httpx.Response(401, headers={"WWW-Authenticate": (
                'Bearer realm="https://auth.example.com/token",service="registry"')})
        return httpx.Response(200, headers={"Docker-Content-Digest": "sha256:" + "b" * 64,
                                            "Content-Type": media.OCI_MANIFEST,
                                            "Content-Length": "10"})

    creds = Credentials("bot", Secret("bot-password-1"), "test")
    with _mock_client(handler, [], credentials=creds) as client:
        assert client.head_manifest("team/app", "v1") is not None
        assert client.head_manifest("team/app", "v2") is not None
    token_requests = [auth for url, auth in seen if "auth.example.com" in url]
    assert token_requests == ["Basic " + base64.b64encode(b"bot:bot-password-1").decode()]
    assert seen[-1][1] == "Bearer bearer-token-xyz" and len(seen) == 4
    assert console.mask("x bearer-token-xyz") == f"x {console.MASK}"


def test_identity_token_is_exchanged_by_post_never_sent_as_basic() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "auth.example.com":
            return httpx.Response(200, json={"access_token": "access-token-123"})
        if request.headers.get("Authorization") != "Bearer access-token-123":
            return httpx.Response(401, headers={"WWW-Authenticate": (
                'Bearer realm="https://auth.example.com/token",service="registry"')})
        return httpx.Response(200, content=MANIFEST, headers={"Content-Type": media.OCI_MANIFEST})

    creds = Credentials("<token>", Secret("identity-token-456"), "auth file")
    with _mock_client(handler, [], credentials=creds) as client:
        assert client.get_manifest("team/app", "v1").body == MANIFEST
    token_request = next(r for r in seen if r.url.host == "auth.example.com")
    assert token_request.method == "POST" and "Authorization" not in token_request.headers
    form = dict(pair.split("=", 1) for pair in token_request.content.decode().split("&"))
    assert form["grant_type"] == "refresh_token" and form["refresh_token"] == "identity-token-456"
    assert form["scope"] == "repository%3Ateam%2Fapp%3Apull" and form["service"] == "registry"
    assert not any("identity-token-456" in r.headers.get("Authorization", "") for r in seen)
    # A registry that only offers Basic never gets the identity token as a password.
    basic_only: list[httpx.Request] = []

    def basic(request: httpx.Request) -> httpx.Response:
        basic_only.append(request)
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    with _mock_client(basic, [], credentials=creds) as client, pytest.raises(RegistryAuthError):
        client.get_manifest("team/app", "v1")
    assert len(basic_only) == 1 and "Authorization" not in basic_only[0].headers


def test_refused_credentials_name_registry_repository_and_operation() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'},
                              json={"errors": [{"code": "UNAUTHORIZED", "message": "no"}]})

    creds = Credentials("bot", Secret("wrong-password-2"), "test")
    with _mock_client(handler, [], credentials=creds) as client:
        with pytest.raises(RegistryAuthError) as info:
            client.put_manifest("team/app", "v1", Manifest.from_bytes(MANIFEST))
    text = str(info.value) + (info.value.hint or "")
    assert "registry.example.com" in text and "team/app" in text and "write manifest" in text
    assert "wrong-password-2" not in text


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> tuple[RegistryServer, str]:
    """A module registry with one v2s2 and one OCI image pushed by skopeo."""
    from conftest import require_tool

    require_tool("skopeo", "skopeo")
    require_tool("docker-registry", "docker-registry")
    tmp = tmp_path_factory.mktemp("client")
    server = RegistryServer(tmp / "registry")
    host = server.start()
    push_test_image(tmp, f"{host}/client/docker:v1", fmt="v2s2", label="d")
    push_test_image(tmp, f"{host}/client/oci:v1", fmt="oci", label="o")
    yield server, host
    server.stop()


@pytest.mark.real
def test_head_get_put_list_delete(pushed: tuple[RegistryServer, str]) -> None:
    server, host = pushed
    with RegistryClient(host) as client:
        info = client.head_manifest("client/docker", "v1")
        assert info is not None and info.media_type == media.DOCKER_MANIFEST
        manifest = client.get_manifest("client/docker", "v1")
        assert manifest.digest == info.digest and len(manifest.body) == info.size
        assert client.head_manifest("client/docker", "nope") is None
        assert client.head_manifest("client/nothing", "v1") is None
        mark = server.log_mark()
        assert client.put_manifest("client/docker", "copy", manifest) == manifest.digest
        records = server.requests_since(mark)
        assert [(r.method, r.kind) for r in records] == [("PUT", "manifest")]
        assert sorted(client.list_tags("client/docker")) == ["copy", "v1"]
        assert client.list_tags("client/none") == []
        config = media.config_descriptor(manifest.body)
        assert client.blob_exists("client/docker", config.digest)
        assert json.loads(client.get_blob("client/docker", config.digest))["architecture"] == "amd64"
        assert not client.blob_exists("client/docker", "sha256:" + "0" * 64)


@pytest.mark.real
def test_oci_manifest_bytes_preserved(pushed: tuple[RegistryServer, str]) -> None:
    _, host = pushed
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/client/oci:v1").stdout
    with RegistryClient(host) as client:
        manifest = client.get_manifest("client/oci", "v1")
        assert manifest.media_type == media.OCI_MANIFEST
        assert manifest.body == raw.encode()
        client.put_manifest("client/oci", "again", manifest)
        assert client.get_manifest("client/oci", "again").body == manifest.body
        by_digest = client.get_manifest("client/oci", manifest.digest)
        assert by_digest.body == manifest.body


@pytest.mark.real
def test_delete_by_digest_and_errors(pushed: tuple[RegistryServer, str]) -> None:
    _, host = pushed
    with RegistryClient(host) as client:
        client.put_blob("client/docker", media.EMPTY_JSON)
        throwaway = Manifest.from_bytes(media.throwaway_manifest("unit"), media.OCI_MANIFEST)
        client.put_manifest("client/docker", "scratch", throwaway)
        client.delete_manifest("client/docker", throwaway.digest)
        assert client.head_manifest("client/docker", "scratch") is None
        client.delete_manifest("client/docker", throwaway.digest, missing_ok=True)
        with pytest.raises(RegistryError, match="not found"):
            client.delete_manifest("client/docker", throwaway.digest)
        with pytest.raises(RegistryError, match="needs a digest"):
            client.delete_manifest("client/docker", "v1")
        with pytest.raises(RegistryError, match="client/docker.*not found"):
            client.get_manifest("client/docker", "missing")
        bad = Manifest.from_bytes(b'{"schemaVersion": 2, "mediaType": "'
                                  + media.DOCKER_MANIFEST.encode() + b'", "config": {}}',
                                  media.DOCKER_MANIFEST)
        with pytest.raises(RegistryError, match="MANIFEST_INVALID|BLOB_UNKNOWN|400"):
            client.put_manifest("client/docker", "broken", bad)
