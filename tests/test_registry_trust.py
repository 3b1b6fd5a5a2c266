"""Registry trust (issue #13): what kiln does when a registry, or a proxy in front of it,
misbehaves. One test per failure mode through real docker-registry instances behind the fault
proxy (``helpers.fault_proxy``), plus fast unit tests of the same rules through the client's
injectable transport and clock:

1. a tag left listed but pointing at nothing (distribution's half-done DELETE) is repaired, on
   the run that caused it and on a later run; one that keeps coming back is exit 4 "rerun";
2. credentials never follow a redirect to another host;
3. credentials never go to a plain-HTTP token service of an https registry (a realm on another
   host over https works);
4. every read is bounded (manifests, configs, tag-list pages and their number);
5. bytes that do not match their digest are an integrity failure: exit 4, its own message, not
   retried;
6. one deadline per registry operation covers attempts and waits.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers.clock import FakeClock
from helpers.fault_proxy import FaultProxy
from helpers.images import push_test_image
from helpers.run import run_kiln
from kiln.errors import RegistryAuthError, RegistryIntegrityError, RegistryTransientError
from kiln.local_registry import RegistryServer
from kiln.redact import Secret
from kiln.registry import media
from kiln.registry.auth import Credentials
from kiln.registry.client import MANIFEST_LIMIT, RegistryClient
from kiln.registry.media import Manifest

PASSWORD = "Trust-pa55word-never-sent"
CREDS = Credentials("ci-bot", Secret(PASSWORD), "test")
MANIFEST = b'{"schemaVersion":2,"mediaType":"' + media.OCI_MANIFEST.encode() + b'"}'


# -- helpers -----------------------------------------------------------------------------------


def mock_client(handler: Callable[[httpx.Request], httpx.Response], clock: FakeClock | None = None,
                **kwargs: Any) -> RegistryClient:
    clock = clock or FakeClock(1000.0)
    return RegistryClient("registry.example.com", transport=httpx.MockTransport(handler),
                          sleep=clock.sleep, clock=clock, **kwargs)


def ci_env(address: str, **extra: str) -> dict[str, str]:
    return {"CI": "true", "CI_PIPELINE_ID": "9", "CI_COMMIT_BRANCH": "main",
            "CI_DEFAULT_BRANCH": "main", "IMAGE_NAME": "app", "KILN_REGISTRY": address,
            "HOME": "/nonexistent", **extra}


def tags_of(host: str, repo: str = "app") -> dict[str, str | None]:
    """tag -> digest, read straight from the registry; ``None`` for a tag pointing at nothing."""
    with RegistryClient(host) as client:
        result: dict[str, str | None] = {}
        for tag in client.list_tags(repo):
            info = client.head_manifest(repo, tag)
            result[tag] = info.digest if info else None
        return result


@pytest.fixture
def tagged(tmp_path: Path, registry: RegistryServer) -> Iterator[tuple[str, str]]:
    """app:p-9 pushed by skopeo, tagged g-9 and mr-4; (registry host, its digest)."""
    from conftest import require_tool

    require_tool("skopeo", "skopeo")
    host = registry.address
    push_test_image(tmp_path, f"{host}/app:p-9")
    with RegistryClient(host) as client:
        source = client.get_manifest("app", "p-9")
        for tag in ("g-9", "mr-4"):
            client.put_manifest("app", tag, source)
    yield host, source.digest


def first_request(fault: str, method: str, part: str) -> Callable[[str, str, int], str | None]:
    """``fault`` for the first ``method`` request whose path has ``part``, none after it."""
    hits: list[str] = []

    def rule(m: str, p: str, a: int) -> str | None:
        if m == method and part in p and not hits:
            hits.append(p)
            return fault
        return None

    return rule


def always(fault: str, method: str, part: str) -> Callable[[str, str, int], str | None]:
    return lambda m, p, a: fault if m == method and part in p else None


# -- 1. a dangling tag is repaired ---------------------------------------------------------------


@pytest.mark.real
def test_stop_mr_repairs_the_tag_a_half_done_delete_left(tmp_path: Path,
                                                          registry: RegistryServer,
                                                          tagged: tuple[str, str]) -> None:
    """The DELETE of the throwaway manifest removes the manifest but not the tag and answers
    500; kiln sees the tag still listed, re-points it and deletes again."""
    host, digest = tagged
    with FaultProxy(host, first_request("delete-keeps-tag", "DELETE", "/manifests/"),
                    storage=registry.data_dir) as proxy:
        done = run_kiln(tmp_path, "stop-mr", "--mr", "4", env=ci_env(proxy.address))
        assert [f[0] for f in proxy.faults] == ["delete-keeps-tag"]
    assert done.returncode == 0, done.stderr
    assert "still listed but points at nothing" in done.stderr
    assert tags_of(host) == {"p-9": digest, "g-9": digest}


@pytest.mark.real
def test_a_rerun_repairs_a_tag_left_pointing_at_nothing(tmp_path: Path, registry: RegistryServer,
                                                        tagged: tuple[str, str]) -> None:
    """The state the issue reported: mr-4 listed, a HEAD 404. Before, every rerun said 'absent'."""
    host, digest = tagged
    with FaultProxy(host, always("delete-keeps-tag", "DELETE", "/manifests/"),
                    storage=registry.data_dir) as proxy:  # every delete half-done: kiln gives up
        failed = run_kiln(tmp_path, "stop-mr", "--mr", "4", env=ci_env(proxy.address))
    assert failed.returncode == 4, failed.stderr
    assert "still listed after its removal and 3 repairs" in failed.stderr
    assert "rerun stop-mr" in failed.stderr
    assert tags_of(host) == {"p-9": digest, "g-9": digest, "mr-4": None}  # dangling
    rerun = run_kiln(tmp_path, "stop-mr", "--mr", "4", env=ci_env(host))
    assert rerun.returncode == 0, rerun.stderr
    assert "absent" not in rerun.stderr and "removed" in rerun.stderr
    assert tags_of(host) == {"p-9": digest, "g-9": digest}
    again = run_kiln(tmp_path, "stop-mr", "--mr", "4", env=ci_env(host))
    assert again.returncode == 0 and "absent" in again.stderr


# -- 2. credentials never follow a redirect ------------------------------------------------------


class Recorder(BaseHTTPRequestHandler):
    """Another host: answers everything with a Bearer challenge naming its own token realm,
    and records every Authorization header it is sent."""

    seen: list[tuple[str, str | None]] = []

    def _answer(self) -> None:
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        host = f"127.0.0.1:{self.server.server_address[1]}"
        if self.path.startswith("/token"):
            body = json.dumps({"token": "stolen-token"}).encode()
            self.send_response(200)
        else:
            body = b'{"errors":[{"code":"UNAUTHORIZED"}]}'
            self.send_response(401)
            self.send_header("WWW-Authenticate",
                             f'Bearer realm="http://{host}/token",service="elsewhere"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_POST = _answer  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def elsewhere() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    seen: list[tuple[str, str | None]] = []
    handler = type("Elsewhere", (Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


@pytest.mark.real
def test_credentials_never_follow_a_redirect_to_another_host(
        tmp_path: Path, tagged: tuple[str, str],
        elsewhere: tuple[str, list[tuple[str, str | None]]]) -> None:
    host, _ = tagged
    other, seen = elsewhere
    with FaultProxy(host, always("redirect", "GET", "/manifests/"), redirect_to=other) as proxy:
        done = run_kiln(tmp_path, "tag", env=ci_env(proxy.address, CI_REGISTRY_USER="ci-bot",
                                                     CI_REGISTRY_PASSWORD=PASSWORD))
        with RegistryClient(proxy.address, credentials=CREDS) as client:
            with pytest.raises(RegistryAuthError, match="redirected to 127.0.0.1"):
                client.get_manifest("app", "p-9")
    assert done.returncode == 3, done.stderr
    assert "was redirected to" in done.stderr and "asks for credentials" in done.stderr
    assert seen and all(auth is None for _, auth in seen), seen
    assert not [path for path, _ in seen if path.startswith("/token")]  # its realm not used
    assert PASSWORD not in done.stdout + done.stderr


def test_learnt_basic_credentials_are_dropped_on_a_redirect_to_another_host() -> None:
    """Unit: once the registry asked for Basic, its requests carry it — but a redirect to
    another origin does not (httpx drops it), and that origin's challenge is not learnt."""
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("Authorization")))
        if request.url.host == "storage.example.net":
            return httpx.Response(401, headers={"WWW-Authenticate": (
                'Bearer realm="https://storage.example.net/token",service="s"')})
        if "Authorization" not in request.headers:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        if request.url.path.endswith("/v1"):
            return httpx.Response(200, content=MANIFEST,
                                  headers={"Content-Type": media.OCI_MANIFEST})
        return httpx.Response(307, headers={
            "Location": "https://storage.example.net" + request.url.path})

    with mock_client(handler, credentials=CREDS) as client:
        assert client.get_manifest("team/app", "v1").body == MANIFEST
        with pytest.raises(RegistryAuthError, match="redirected to storage.example.net"):
            client.get_manifest("team/app", "v2")
    assert [auth for url, auth in seen if "storage.example.net" in url] == [None]
    assert not [url for url, _ in seen if url.startswith("https://storage.example.net/token")]


def test_a_next_page_on_another_host_is_not_followed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"tags": ["a"]}, headers={
            "Link": '<https://elsewhere.example.net/v2/team/app/tags/list?last=a>; rel="next"'})

    with mock_client(handler, credentials=CREDS) as client:
        with pytest.raises(RegistryIntegrityError, match="next page is on another host"):
            client.list_tags("team/app")


# -- 3. credentials never over plain HTTP to a token service of an https registry ---------------


class HttpsTokenService:
    """``helpers.secure.TokenService`` served over TLS on ``localhost`` (another host name than
    the registry's 127.0.0.1): the realm layout of Docker Hub and GitLab."""

    def __init__(self, service: Any, pki: Any) -> None:
        self.service = service
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        service.start()
        assert service.server is not None
        service.server.socket = context.wrap_socket(service.server.socket, server_side=True)
        port = service.server.server_address[1]
        type(service).realm = property(lambda self: f"https://localhost:{port}/token")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from helpers.secure import make_pki

    return make_pki(tmp_path_factory.mktemp("trust-pki"))


def _tls_token_registry(tmp: Path, pki: Any, *, https_realm: bool) -> tuple[RegistryServer, Any]:
    from conftest import require_tool
    from helpers.secure import TokenService, tls_http_config

    require_tool("docker-registry", "docker-registry")
    service_type = type("Service", (TokenService,), {})  # its own realm property
    service = service_type(pki, users={"ci-bot": (PASSWORD, {"pull", "push", "delete"})})
    if https_realm:
        HttpsTokenService(service, pki)
    else:
        service.start()
    server = RegistryServer(tmp / "registry", extra_config={
        "http": tls_http_config(pki), "auth": service.registry_auth()})
    server.start()
    return server, service


@pytest.mark.real
def test_no_credentials_to_a_plain_http_realm_of_an_https_registry(tmp_path: Path,
                                                                   pki: Any) -> None:
    server, service = _tls_token_registry(tmp_path, pki, https_realm=False)
    try:
        assert service.realm.startswith("http://")
        with RegistryClient(server.address, scheme="https", ca_bundle=pki.ca_cert,
                            credentials=CREDS) as client:
            with pytest.raises(RegistryAuthError, match="plain-HTTP token service") as info:
                client.head_manifest("team/app", "v1")
        assert "clear text" in str(info.value) and PASSWORD not in str(info.value)
        assert service.requests == []  # nothing was sent to the realm
        env = ci_env(server.address, KILN_LOOPBACK_TLS="true", KILN_CA_BUNDLE=str(pki.ca_cert),
                     CI_REGISTRY_USER="ci-bot", CI_REGISTRY_PASSWORD=PASSWORD)
        done = run_kiln(tmp_path, "tag", env=env)
        assert done.returncode == 3, done.stderr
        assert "kiln does not send credentials in clear text" in done.stderr
        assert service.requests == [] and PASSWORD not in done.stdout + done.stderr
    finally:
        server.stop()
        service.stop()


@pytest.mark.real
def test_a_realm_on_another_host_over_https_works(tmp_path: Path, pki: Any) -> None:
    server, service = _tls_token_registry(tmp_path, pki, https_realm=True)
    try:
        assert service.realm.startswith("https://localhost:")
        with RegistryClient(server.address, scheme="https", ca_bundle=pki.ca_cert,
                            credentials=CREDS) as client:
            assert client.head_manifest("team/app", "v1") is None  # authenticated, absent
            assert client.list_tags("team/app") == []
        assert [r["user"] for r in service.requests] == ["ci-bot"]
    finally:
        server.stop()
        service.stop()


def test_a_plain_http_registry_may_use_a_plain_http_realm_and_anonymous_may_too() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(200, json={"token": "t-123"})
        if request.headers.get("Authorization") != "Bearer t-123":
            return httpx.Response(401, headers={"WWW-Authenticate": (
                'Bearer realm="http://auth.example.com/token",service="r"')})
        return httpx.Response(404)

    with mock_client(handler, credentials=CREDS, scheme="http") as client:
        assert client.head_manifest("team/app", "v1") is None
    with mock_client(handler) as anonymous:  # https registry, no credentials: nothing to leak
        assert anonymous.head_manifest("team/app", "v1") is None
    with mock_client(handler, credentials=CREDS) as client:
        with pytest.raises(RegistryAuthError, match="clear text"):
            client.head_manifest("team/app", "v1")


# -- 4. bounded reads --------------------------------------------------------------------------


@pytest.mark.real
@pytest.mark.parametrize("fault", ["huge", "huge-chunked"])
def test_a_huge_manifest_is_refused_without_reading_it(tagged: tuple[str, str],
                                                       fault: str) -> None:
    host, _ = tagged
    with FaultProxy(host, always(fault, "GET", "/manifests/p-9")) as proxy:
        with RegistryClient(proxy.address, sleep=lambda s: None) as client:
            with pytest.raises(RegistryIntegrityError, match="larger than 4 MiB, kiln's limit "
                               "for a manifest"):
                client.get_manifest("app", "p-9")
        assert proxy.attempts[("GET", "/v2/app/manifests/p-9")] == 1  # not retried
        time.sleep(0.2)
        assert proxy.huge_sent < 40 * 1024 * 1024  # kiln stopped reading (200 MB on offer)


@pytest.mark.real
def test_manifest_task_refuses_a_huge_config_blob(tmp_path: Path,
                                                  registry: RegistryServer) -> None:
    from conftest import require_tool

    require_tool("skopeo", "skopeo")
    host = registry.address
    push_test_image(tmp_path, f"{host}/app:p-9-amd64")
    with FaultProxy(host, always("huge-chunked", "GET", "/blobs/")) as proxy:
        done = run_kiln(tmp_path, "manifest", env=ci_env(proxy.address, IMAGE_ARCHES="amd64"))
        assert sum(n for (m, p), n in proxy.attempts.items() if "/blobs/" in p) == 1
    assert done.returncode == 4, done.stderr
    assert "larger than 4 MiB, kiln's limit for an image config blob" in done.stderr
    assert "Traceback" not in done.stderr
    assert set(tags_of(host)) == {"p-9-amd64"}  # nothing written


@pytest.mark.real
def test_a_tag_list_whose_pages_loop_ends(tagged: tuple[str, str]) -> None:
    host, _ = tagged
    with FaultProxy(host, always("link-loop", "GET", "/tags/list")) as proxy:
        with RegistryClient(proxy.address) as client:
            with pytest.raises(RegistryIntegrityError, match="pagination loops"):
                client.list_tags("app")
        assert proxy.attempts[("GET", "/v2/app/tags/list")] == 1


def test_tag_list_pages_are_limited() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "0"))
        return httpx.Response(200, json={"tags": [f"t{page}"]}, headers={
            "Link": f'</v2/team/app/tags/list?n=1000&page={page + 1}>; rel="next"'})

    with mock_client(handler) as client:
        client.max_tag_pages = 5
        with pytest.raises(RegistryIntegrityError, match="more than 5 pages"):
            client.list_tags("team/app")
        assert client.request_count == 5


def test_size_limits_come_from_content_length_and_from_the_stream() -> None:
    big = b"x" * (MANIFEST_LIMIT + 1)

    def declared(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=big, headers={"Content-Type": media.OCI_MANIFEST})

    def streamed(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter([big[:MANIFEST_LIMIT], big[MANIFEST_LIMIT:]]))

    for handler in (declared, streamed):
        with mock_client(handler) as client:
            with pytest.raises(RegistryIntegrityError, match="larger than 4 MiB"):
                client.get_manifest("team/app", "v1")
            assert client.request_count == 1
    with mock_client(lambda r: httpx.Response(200, content=b"y" * (4 * 1024 * 1024 + 1))) as c:
        with pytest.raises(RegistryIntegrityError, match="image config blob"):
            c.get_blob("team/app", "sha256:" + "0" * 64)
    # an error body is cut, not refused: its first line is still the detail
    with mock_client(lambda r: httpx.Response(400, content=b"bad\n" + big)) as client:
        with pytest.raises(Exception, match=r"HTTP 400 \(bad\)"):
            client.get_manifest("team/app", "v1")


# -- 5. integrity failures ---------------------------------------------------------------------


@pytest.mark.real
def test_bytes_that_do_not_match_their_digest_are_an_integrity_failure(
        tmp_path: Path, tagged: tuple[str, str]) -> None:
    host, digest = tagged
    before = tags_of(host)
    with FaultProxy(host, always("corrupt", "GET", "/manifests/p-9")) as proxy:
        done = run_kiln(tmp_path, "tag", env=ci_env(proxy.address))
        assert proxy.attempts[("GET", "/v2/app/manifests/p-9")] == 1  # not retried five times
    assert done.returncode == 4, done.stderr
    assert f"do not match digest {digest}" in done.stderr
    assert "it is corrupt, or a proxy rewrote them" in done.stderr
    assert "unreachable or overloaded" not in done.stderr
    assert tags_of(host) == before


def test_digest_mismatch_is_not_retried() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=MANIFEST, headers={
            "Content-Type": media.OCI_MANIFEST, "Docker-Content-Digest": "sha256:" + "a" * 64})

    clock = FakeClock(1000.0)
    with mock_client(handler, clock) as client:
        with pytest.raises(RegistryIntegrityError, match="corrupt, or a proxy rewrote") as info:
            client.get_manifest("team/app", "v1")
        assert client.request_count == 1 and clock.sleeps == []
    assert info.value.exit_code == 4


# -- 6. one deadline per operation ---------------------------------------------------------------


def test_retry_after_119_on_every_attempt_stops_at_the_deadline() -> None:
    clock = FakeClock(1000.0)
    with mock_client(lambda r: httpx.Response(429, headers={"Retry-After": "119"}),
                     clock) as client:
        with pytest.raises(RegistryTransientError) as info:
            client.put_manifest("team/app", "v1", Manifest.from_bytes(MANIFEST))
    assert clock.sleeps == [119.0]  # before: 4 x 119 s = 478 s
    text = str(info.value)
    assert "deadline for one registry operation (120s, setting registry-deadline)" in text
    assert "HTTP 429" in text and "KILN_REGISTRY_DEADLINE" in text


def test_the_deadline_covers_attempts_that_time_out() -> None:
    clock = FakeClock(1000.0)

    timeouts: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        timeout = request.extensions["timeout"]["read"]  # each attempt: the server never answers
        timeouts.append(timeout)
        clock.now += timeout
        raise httpx.ReadTimeout("timed out", request=request)

    with mock_client(handler, clock, deadline=150.0, timeout=60.0) as client:
        with pytest.raises(RegistryTransientError, match=r"gave up after 150s and 3 "
                           "attempts: the deadline for one registry operation \\(150s"):
            client.put_manifest("team/app", "v1", Manifest.from_bytes(MANIFEST))
    assert timeouts[:2] == [60.0, 60.0] and timeouts[2] < 30  # the last one: what was left


@pytest.mark.real
def test_a_registry_that_accepts_a_put_and_never_answers(tmp_path: Path,
                                                        tagged: tuple[str, str]) -> None:
    host, digest = tagged
    with FaultProxy(host, always("hang-after", "PUT", "/manifests/latest")) as proxy:
        started = time.monotonic()
        done = run_kiln(tmp_path, "tag", env=ci_env(proxy.address, KILN_REGISTRY_DEADLINE="3"))
        spent = time.monotonic() - started
    assert done.returncode == 4, done.stderr
    assert "write manifest latest: gave up after" in done.stderr
    assert "deadline for one registry operation (3s, setting registry-deadline)" in done.stderr
    assert spent < 30  # before: 5 x 60 s
    assert tags_of(host)["g-9"] == digest


@pytest.mark.tool
def test_setting_the_deadline_badly_is_a_clear_error(tmp_path: Path) -> None:
    done = run_kiln(tmp_path, "tag", env=ci_env("127.0.0.1:9", KILN_REGISTRY_DEADLINE="soon"))
    assert done.returncode == 2
    assert "KILN_REGISTRY_DEADLINE" in done.stderr and "registry_deadline" in done.stderr


# -- other gaps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["127.0.0.1:70000", "registry.example:0/g", "[::1]:65536/x"])
def test_a_registry_port_outside_1_to_65535_is_refused(tmp_path: Path, prefix: str) -> None:
    from kiln.errors import ConfigError, InputError
    from kiln.registry.reference import parse_reference
    from kiln.settings import Settings

    with pytest.raises(InputError, match="is not between 1 and 65535"):
        parse_reference(f"{prefix}/app:1")
    with pytest.raises(ConfigError, match="KILN_REGISTRY: invalid registry host .* port"):
        Settings.resolve(tmp_path, {}, {"KILN_REGISTRY": prefix}, {})
    assert parse_reference("127.0.0.1:65535/app").host == "127.0.0.1:65535"


GLPAT = "glpat-" + "Qx7_" * 5  # a GitLab token's shape, in an image label


@pytest.mark.real
def test_tag_and_manifest_refuse_an_image_whose_config_carries_a_credential(
        tmp_path: Path, registry: RegistryServer) -> None:
    """The registry-side config scan is wired into tag (one config GET) and manifest (the
    configs it reads anyway): exit 2, the finding named (the token masked), nothing written."""
    from conftest import require_tool

    require_tool("skopeo", "skopeo")
    host = registry.address
    push_test_image(tmp_path, f"{host}/app:p-9", label=GLPAT)
    push_test_image(tmp_path, f"{host}/app:p-9-amd64", arch="amd64", label="clean")
    push_test_image(tmp_path, f"{host}/app:p-9-arm64", arch="arm64", label=GLPAT)
    before = tags_of(host)
    mark = registry.log_mark()
    tagged = run_kiln(tmp_path, "tag", env=ci_env(host))
    assert tagged.returncode == 2, tagged.stderr
    assert f"refusing to tag {host}/app:p-9: its config carries credentials" in tagged.stderr
    assert "config Labels: 'test' value is a GitLab token" in tagged.stderr
    assert GLPAT not in tagged.stdout + tagged.stderr
    assert not [r for r in registry.requests_since(mark) if r.method == "PUT"]
    assembled = run_kiln(tmp_path, "manifest", env=ci_env(host, IMAGE_ARCHES="amd64 arm64"))
    assert assembled.returncode == 2, assembled.stderr
    assert f"refusing to assemble {host}/app:p-9: its config carries" in assembled.stderr
    assert "[arm64]" in assembled.stderr and GLPAT not in assembled.stderr
    assert tags_of(host) == before
    allowed = run_kiln(tmp_path, "tag", env=ci_env(host, KILN_SECRET_ALLOW="test"))
    assert allowed.returncode == 2  # a token's shape is refused whatever its name


@pytest.mark.tool
def test_a_secret_refusal_points_at_the_build_file_line(tmp_path: Path) -> None:
    """The refusal names the .in line (and the include's line), not only the generated
    Containerfile's."""
    (tmp_path / "builds").mkdir()
    (tmp_path / "includes").mkdir()
    (tmp_path / "includes" / "npm-login").write_text(
        f'RUN npm config set //registry.npmjs.org/:_authToken "{GLPAT}"\n')
    (tmp_path / "builds" / "app.in").write_text(
        '/* app */\n#define BASE scratch\n\nFROM BASE\nENV NPM_TOKEN=abc123\n'
        '#include "npm-login"\n')
    done = run_kiln(tmp_path, "build", "--dry-run", env={"IMAGE_NAME": "app",
                                                         "KILN_REGISTRY": "127.0.0.1:5000"})
    assert done.returncode == 2, done.stderr
    assert "builds/app.in:5 (Containerfile " in done.stderr
    assert "includes/npm-login:1 (Containerfile " in done.stderr
    assert GLPAT not in done.stdout + done.stderr


@pytest.mark.real
def test_a_ca_bundle_is_mounted_beside_the_system_bundle(tmp_path: Path,
                                                         buildah_storage: dict[str, Path]) -> None:
    """KILN_CA_BUNDLE reaches RUN steps through SSL_CERT_FILE & co., and a step may still
    replace /etc/ssl/certs/ca-certificates.crt by rename (what update-ca-certificates does):
    before, the bundle was mounted over that file and the rename failed."""
    import shutil
    import subprocess

    from conftest import require_tool, skip_or_fail

    require_tool("buildah", "buildah")
    busybox = shutil.which("busybox")
    if busybox is None:
        skip_or_fail("busybox not installed (apt-get install busybox-static)")
    (tmp_path / "builds").mkdir()
    shutil.copy(busybox, tmp_path / "busybox")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nkiln test\n")
    script = ("b=/bin/busybox; $b mkdir -p /etc/ssl/certs /tmp"
              " && $b cat $SSL_CERT_FILE > /tmp/new && $b mv /tmp/new "
              "/etc/ssl/certs/ca-certificates.crt && $b env > /seen")
    (tmp_path / "builds" / "cafix.in").write_text(
        'FROM scratch\nCOPY busybox /bin/busybox\n'
        f'RUN ["/bin/busybox", "sh", "-c", "{script}"]\n')
    storage = f"{buildah_storage['root']}"
    done = run_kiln(tmp_path, "build", "--no-push", env={
        "IMAGE_NAME": "cafix", "KILN_CA_BUNDLE": str(tmp_path / "ca.pem"),
        "KILN_STORAGE_DRIVER": "vfs", "KILN_STORAGE_ROOT": storage,
        "KILN_STORAGE_RUNROOT": str(buildah_storage["runroot"]), "KILN_REGISTRY": "127.0.0.1:9"})
    assert done.returncode == 0, done.stderr

    def buildah(*args: str) -> str:
        return subprocess.run(["buildah", "--root", storage, "--runroot",
                               str(buildah_storage["runroot"]), "--storage-driver", "vfs", *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    ref = next(line.split()[0] + ":" + line.split()[1]
               for line in buildah("images", "--format", "{{.Name}} {{.Tag}}").splitlines()
               if line.endswith(" p-local") or "/cafix " in line + " ")
    container = buildah("from", "--pull=never", ref)
    try:
        root = Path(buildah("mount", container))
        assert (root / "etc/ssl/certs/ca-certificates.crt").read_text().endswith("kiln test\n")
        seen = (root / "seen").read_text()
        assert "SSL_CERT_FILE=/run/kiln/ca-bundle.crt" in seen
        assert "PIP_CERT=/run/kiln/ca-bundle.crt" in seen
        config = json.loads(buildah("inspect", "--type", "image", ref))
        assert not [e for e in config["OCIv1"]["config"].get("Env", []) if "ca-bundle" in e]
    finally:
        buildah("rm", container)
