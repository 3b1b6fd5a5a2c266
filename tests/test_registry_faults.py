"""A registry that fails requests (5xx, 429 with Retry-After, dropped connections, answers lost
after the write happened, truncated bodies, 403) between kiln and a real docker-registry: the
final state is exactly right, reruns converge, and errors are clear with nothing written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import require_tool
from helpers.fault_proxy import FaultProxy, every_request_fails
from helpers.images import push_test_image
from helpers.run import run_kiln
from kiln import promote
from kiln.ci_context import CIContext
from kiln.errors import RegistryError, RegistryTransientError
from kiln.local_registry import RegistryServer
from kiln.registry import media
from kiln.registry.client import RegistryClient
from kiln.settings import Settings

pytestmark = pytest.mark.real

ALL_FAULTS = ["503", "429", "drop", "drop-after", "truncate", "500", "502"]


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("skopeo", "skopeo")


def quick_factory(sleeps: list[float]) -> Callable[[str], RegistryClient]:
    """Clients that record their waits instead of sleeping (behaviour, not wall-clock)."""
    return lambda host: RegistryClient(host, sleep=sleeps.append, max_attempts=4)


def state(host: str, repo: str = "app") -> dict[str, str]:
    with RegistryClient(host) as client:
        return {t: client.head_manifest(repo, t).digest  # type: ignore[union-attr]
                for t in client.list_tags(repo)}


def no_dangling_tags(host: str, repo: str = "app") -> None:
    """Every tag resolves, and every child of every index exists."""
    with RegistryClient(host) as client:
        for tag in client.list_tags(repo):
            manifest = client.get_manifest(repo, tag)
            if manifest.is_index:
                for child in media.index_children(manifest.body):
                    assert client.head_manifest(repo, child.digest) is not None, (tag, child)


@pytest.mark.parametrize("faults", [[k] for k in ALL_FAULTS] + [ALL_FAULTS],
                         ids=[*ALL_FAULTS, "mixed"])
def test_manifest_tag_stop_mr_through_faults(tmp_path: Path, registry: RegistryServer,
                                             faults: list[str]) -> None:
    host = registry.address
    for arch in ("amd64", "arm64"):
        push_test_image(tmp_path, f"{host}/app:p-9-{arch}", arch=arch)
    with FaultProxy(host, every_request_fails(faults, failures=2), retry_after="1") as proxy:
        settings = Settings.resolve(tmp_path, {}, {}, {})
        ci = CIContext(pipeline_id="9", commit_branch="main", default_branch="main",
                       merge_request_iid="4")
        sleeps: list[float] = []
        factory = quick_factory(sleeps)
        ops: list[promote.Op] = []
        with factory(proxy.address) as client:
            index = promote.assemble_index(promote.Registry(client, "app", log=ops.append), ci,
                                           ("amd64", "arm64"))
        results = promote.promote(settings, "app", proxy.address, ("g-9", "latest", "mr-4"),
                                  source_ref="p-9", client_factory=factory, log=ops.append)
        assert {r.status for r in results} == {"written"}
        removed = promote.unpromote(settings, "app", proxy.address, "mr-4",
                                    client_factory=factory, log=ops.append)
        assert removed[0].status == "removed"
        assert proxy.faults, "the proxy injected no fault"
        assert {f[0] for f in proxy.faults} == set(faults)
        if "429" in faults:
            assert 1.0 in sleeps  # Retry-After honoured
    final = state(host)
    assert final == {"p-9-amd64": final["p-9-amd64"], "p-9-arm64": final["p-9-arm64"],
                     "p-9": index.digest, "g-9": index.digest, "latest": index.digest}
    no_dangling_tags(host)


def test_persistent_503_is_transient_and_nothing_is_written(tmp_path: Path,
                                                            registry: RegistryServer) -> None:
    host = registry.address
    push_test_image(tmp_path, f"{host}/app:p-9", arch="amd64")
    before = state(host)
    always = every_request_fails(["503"], failures=10**6)
    with FaultProxy(host, lambda m, p, a: always(m, p, a) if m == "PUT" else None) as proxy:
        mark = registry.log_mark()
        proc = run_kiln(tmp_path, "tag", env={"KILN_REGISTRY": proxy.address, "CI": "true",
                                              "CI_PIPELINE_ID": "9", "IMAGE_NAME": "app"})
        assert proc.returncode == 4, proc.stderr
        assert "write manifest g-9 failed after 5 attempts: HTTP 503" in proc.stderr
        assert "rerun later" in proc.stderr
        assert proxy.attempts[("PUT", "/v2/app/manifests/g-9")] == 5
    assert not [r for r in registry.requests_since(mark) if r.method == "PUT"]
    assert state(host) == before


def test_403_is_a_clear_error_not_retried_and_nothing_written(tmp_path: Path,
                                                              registry: RegistryServer) -> None:
    host = registry.address
    push_test_image(tmp_path, f"{host}/app:p-9", arch="amd64")
    before = state(host)
    with FaultProxy(host, lambda m, p, a: "403" if m == "PUT" else None) as proxy:
        mark = registry.log_mark()
        env = {"KILN_REGISTRY": proxy.address, "CI": "true", "CI_PIPELINE_ID": "9",
               "IMAGE_NAME": "app", "CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main"}
        proc = run_kiln(tmp_path, "tag", env=env)
        assert proc.returncode == 3
        assert (f"registry {proxy.address} refused 'write manifest g-9' on repository app "
                "without credentials: HTTP 403 forbidden (DENIED: injected fault)") in proc.stderr
        assert "ask the maintainers" in proc.stderr
        assert proxy.attempts[("PUT", "/v2/app/manifests/g-9")] == 1  # no retry on 4xx
        assert ("PUT", "/v2/app/manifests/latest") not in proxy.attempts  # stopped at once
    assert not [r for r in registry.requests_since(mark) if r.method == "PUT"]
    assert state(host) == before


def test_other_4xx_are_not_retried(registry: RegistryServer) -> None:
    with FaultProxy(registry.address, lambda m, p, a: None) as proxy:
        sleeps: list[float] = []
        with RegistryClient(proxy.address, sleep=sleeps.append) as client:
            with pytest.raises(RegistryError, match="not found"):
                client.get_manifest("app", "missing")
        assert proxy.attempts[("GET", "/v2/app/manifests/missing")] == 1
        assert sleeps == []


def test_backoff_grows_with_jitter(registry: RegistryServer) -> None:
    always = every_request_fails(["502"], failures=10**6)
    with FaultProxy(registry.address, always) as proxy:
        sleeps: list[float] = []
        with RegistryClient(proxy.address, sleep=sleeps.append, max_attempts=5,
                            backoff=1.0) as client:
            with pytest.raises(RegistryTransientError, match="after 5 attempts"):
                client.head_manifest("app", "x")
    assert len(sleeps) == 4
    for attempt, wait in enumerate(sleeps, start=1):
        ceiling = 2 ** (attempt - 1)
        assert ceiling / 2 <= wait <= ceiling


def test_retry_after_too_long_gives_up_with_the_wait(registry: RegistryServer) -> None:
    with FaultProxy(registry.address, lambda m, p, a: "429", retry_after="3600") as proxy:
        with RegistryClient(proxy.address, sleep=lambda s: None) as client:
            with pytest.raises(RegistryTransientError, match="retry after 3600s"):
                client.head_manifest("app", "x")
        assert proxy.attempts[("HEAD", "/v2/app/manifests/x")] == 1
