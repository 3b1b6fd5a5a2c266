"""Fault injection: kiln's real task processes against a real registry behind a proxy that
fails requests at random (seeded: 5xx, 429 with Retry-After, connection resets before and after
the request took effect, truncated bodies, slow answers).

For each fault rate the pipeline's registry tasks (manifest, tag, deploy-production, stop-mr)
and a mirror run through the proxy; every task is rerun until it succeeds. After *every* run,
failed or not, the registry (read directly, not through the proxy) must be consistent: every tag
resolves to a manifest whose children / config / layers all exist. A failed run must exit with
the transient code (4) — or, for the mirror, the failed images' code — with a message and no
traceback. At the end the state is exactly the expected one, and a rerun changes nothing.

The proxy fails each distinct request a bounded number of times (``max_faults``; the mirror's
skopeo copies run with ``retries: 0`` here so that kiln's rerun, not skopeo's backoff,
recovers), so reruns converge; the decisions are a hash of (seed, request, attempt), so a
rate's run is reproducible. A failed registry task exits 4 whatever the fault: transient
faults, an integrity failure and a tag the registry left dangling are all "rerun".
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import require_tool
from helpers.fault_proxy import FaultProxy, Rule, request_key, seeded_faults
from helpers.images import push_test_image
from helpers.run import run_kiln
from kiln import promote
from kiln.errors import RegistryError
from kiln.local_registry import RegistryServer
from kiln.registry import media
from kiln.registry.client import RegistryClient

pytestmark = pytest.mark.real

KINDS = ["500", "502", "503", "429", "drop", "drop-after", "truncate", "slow"]
RATES = [0.1, 0.3, 0.5]
MIRROR_RATES = [0.1, 0.3, 0.5, 0.7]
MAX_RUNS = 12


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("skopeo", "skopeo")


def consistent(host: str) -> dict[str, dict[str, str]]:
    """repository -> {tag: digest}, asserting nothing dangles (read straight from the registry)."""
    state: dict[str, dict[str, str]] = {}
    with RegistryClient(host) as client:
        resp = client._http.get(f"http://{host}/v2/_catalog")
        for repo in resp.json().get("repositories") or []:
            tags: dict[str, str] = {}
            for tag in client.list_tags(repo):
                try:
                    manifest = client.get_manifest(repo, tag)
                except RegistryError:
                    # removed meanwhile by a concurrent run (fine), or dangling (not fine)
                    assert not still_dangling(client, repo, tag), f"{repo}:{tag} dangles"
                    continue
                tags[tag] = manifest.digest
                images = [manifest]
                if manifest.is_index:
                    images = [client.get_manifest(repo, c.digest)
                              for c in media.index_children(manifest.body)]
                for image in images:
                    blobs = [media.config_descriptor(image.body)]
                    blobs += media.layer_descriptors(image.body)
                    for blob in blobs:
                        assert client.blob_exists(repo, blob.digest), (repo, tag, blob.digest)
            if tags:
                state[repo] = tags
    return state


def still_dangling(client: RegistryClient, repo: str, tag: str, seconds: float = 2.0) -> bool:
    """Whether ``tag`` stays listed without a manifest. distribution deletes a manifest before
    it untags it, so a concurrent stop-mr (another rate's) shows that state for a moment: only
    a tag still listed and unresolvable after ``seconds`` dangles."""
    deadline = time.monotonic() + seconds
    while tag in client.list_tags(repo):
        try:
            client.get_manifest(repo, tag)
            return False  # it resolves again (re-pointed meanwhile)
        except RegistryError:
            if time.monotonic() > deadline:
                return True
            time.sleep(0.1)
    return False


def until_success(project: Path, host: str, args: list[str], env: dict[str, str],
                  allowed: set[int], log: list[str]) -> str:
    """Run ``invoke <args>`` until it exits 0; every failure must be a clean, allowed one.
    Returns the successful run's stdout."""
    codes: list[int] = []
    for _ in range(MAX_RUNS):
        done = run_kiln(project, *args, env=env)
        codes.append(done.returncode)
        consistent(host)
        if done.returncode == 0:
            break
        assert done.returncode in allowed, done.stderr
        assert "Traceback" not in done.stderr and "error:" in done.stderr, done.stderr
    log.append(f"{args[0]}: exit codes {codes}")
    assert codes[-1] == 0, f"{args[0]} did not converge in {MAX_RUNS} runs: {codes}"
    return done.stdout


def assert_faults_recovered(proxy: FaultProxy) -> None:
    """Faults were injected, and each request a fault stopped was sent again (by the client's
    retry or a rerun) until it got through: the faults were absorbed, not missed."""
    assert proxy.faults, "no fault was injected: the run tested nothing"
    stopped = Counter((method, path) for kind, method, path in proxy.faults
                      if kind != "slow" and "/blobs/uploads/" not in path)
    stopped -= proxy.harmless  # a truncate of an answer without a body stopped nothing
    unretried = {key: n for key, n in stopped.items() if proxy.attempts[key] <= n}
    assert unretried == {}, f"requests that failed and were never sent again: {unretried}"


def ci_env(address: str, image: str) -> dict[str, str]:
    return {"CI": "true", "CI_PIPELINE_ID": "9", "CI_COMMIT_BRANCH": "main",
            "CI_DEFAULT_BRANCH": "main", "CI_MERGE_REQUEST_IID": "4", "IMAGE_NAME": image,
            "CI_REGISTRY_IMAGE": address, "IMAGE_ARCHES": "amd64 arm64"}


def each_rate(check: Callable[[float], str], capsys: pytest.CaptureFixture[str],
              rates: list[float] = RATES) -> None:
    """Run ``check(rate)`` for every rate at once (independent repositories and proxies; the
    consistency checks then also see the other rates' intermediate states)."""
    with ThreadPoolExecutor(max_workers=len(rates)) as pool:
        reports = list(pool.map(check, rates))
    with capsys.disabled():
        print("\n" + "\n".join(reports))


def test_registry_tasks_through_faults(tmp_path: Path, registry: RegistryServer,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    host = registry.address

    def pipeline(rate: float) -> str:
        image, seed = f"app{int(rate * 100)}", int(rate * 100)
        work = tmp_path / image
        work.mkdir()
        for arch in ("amd64", "arm64"):
            push_test_image(work, f"{host}/{image}:p-9-{arch}", arch=arch, label=image)
        before = consistent(host)[image]
        log: list[str] = []
        with FaultProxy(host, seeded_faults(rate, seed, KINDS, max_faults=6),
                        retry_after="1") as proxy:
            env = ci_env(proxy.address, image)
            for task in ("manifest", "tag", "deploy-production", "stop-mr"):
                until_success(work, host, [task], env, {4}, log)
            final = consistent(host)[image]
            index = final["p-9"]
            with RegistryClient(host) as client:
                children = {c.digest for c in
                            media.index_children(client.get_manifest(image, "p-9").body)}
            assert children == {before["p-9-amd64"], before["p-9-arm64"]}
            assert final == {"p-9-amd64": before["p-9-amd64"], "p-9-arm64": before["p-9-arm64"],
                             "p-9": index, "g-9": index, "latest": index, "production": index}
            # reruns converge: the same tags again, then mr-4 removed again
            until_success(work, host, ["tag"], env, {4}, log)
            assert consistent(host)[image] == {**final, "mr-4": index}
            until_success(work, host, ["stop-mr"], env, {4}, log)
            assert consistent(host)[image] == final
            kinds = sorted({f[0] for f in proxy.faults})
            requests = sum(proxy.attempts.values())
        assert_faults_recovered(proxy)  # every rate, 0.1 included, really injected faults
        return (f"[fault rate {rate}, seed {seed}] {len(proxy.faults)} faults in {requests} "
                f"requests ({', '.join(kinds)}); {'; '.join(log)}")

    each_rate(pipeline, capsys)


# The registry client makes this many attempts per request (RegistryClient.max_attempts).
CLIENT_ATTEMPTS = 5
# Faults that leave the registry untouched (the request is not forwarded); the last one is what
# the error message names.
UNFORWARDED = ["500", "502", "429", "drop", "503"]


def burst(method: str, path: re.Pattern[str], failures: int) -> tuple[Rule, list[str]]:
    """The first ``failures`` attempts of the requests ``method path`` fail (kinds rotating
    through UNFORWARDED, the last a 503), then everything passes. Returns the rule and the list
    the paths it failed are appended to."""
    hits: list[str] = []

    def rule(m: str, p: str, _attempt: int) -> str | None:
        if m != method or not path.search(request_key(p)) or len(hits) >= failures:
            return None
        hits.append(p)
        return UNFORWARDED[(len(hits) - 1) % len(UNFORWARDED)]

    return rule, hits


# (task, the write that keeps failing, the state the failed run leaves; "" marks the index,
#  "throwaway" a digest that is none of the images)
BURSTS: list[tuple[str, str, re.Pattern[str], dict[str, str]]] = [
    ("manifest", "PUT", re.compile(r"/manifests/p-9$"),
     {"p-9-amd64": "amd64", "p-9-arm64": "arm64"}),
    ("tag", "PUT", re.compile(r"/manifests/latest$"),
     {"p-9-amd64": "amd64", "p-9-arm64": "arm64", "p-9": "", "g-9": ""}),
    ("deploy-production", "PUT", re.compile(r"/manifests/production$"),
     {"p-9-amd64": "amd64", "p-9-arm64": "arm64", "p-9": "", "g-9": "", "latest": "",
      "mr-4": ""}),
    ("stop-mr", "DELETE", re.compile(r"/manifests/sha256:[0-9a-f]{64}$"),
     {"p-9-amd64": "amd64", "p-9-arm64": "arm64", "p-9": "", "g-9": "", "latest": "",
      "production": "", "mr-4": "throwaway"}),
]
AFTER_RERUN = {
    "manifest": {"p-9-amd64": "amd64", "p-9-arm64": "arm64", "p-9": ""},
    "tag": {"p-9-amd64": "amd64", "p-9-arm64": "arm64", "p-9": "", "g-9": "", "latest": "",
            "mr-4": ""},
    "deploy-production": {"p-9-amd64": "amd64", "p-9-arm64": "arm64", "p-9": "", "g-9": "",
                          "latest": "", "mr-4": "", "production": ""},
    "stop-mr": {"p-9-amd64": "amd64", "p-9-arm64": "arm64", "p-9": "", "g-9": "",
                "latest": "", "production": ""},
}


def test_registry_tasks_fail_when_a_write_keeps_failing_then_converge_on_a_rerun(
        tmp_path: Path, registry: RegistryServer) -> None:
    """The pipeline's registry tasks, each with one write failing ``CLIENT_ATTEMPTS`` times in a
    row (more than the client retries): the run exits 4 naming the write and saying to rerun,
    no traceback, and the registry is exactly as far as the task got (nothing half-written:
    every tag resolves, the index is never written without its children). The rerun, the
    faults spent, exits 0 and leaves exactly the pipeline's tags."""
    host = registry.address
    for arch in ("amd64", "arm64"):
        push_test_image(tmp_path, f"{host}/app:p-9-{arch}", arch=arch, label="app")
    children = consistent(host)["app"]

    def named(state: dict[str, str]) -> dict[str, str]:
        """Digests as names: an arch for a child, "" for the index, "throwaway" otherwise."""
        index = state.get("p-9")
        return {tag: next((arch for arch in ("amd64", "arm64")
                           if digest == children[f"p-9-{arch}"]), None)
                or ("" if digest == index else "throwaway") for tag, digest in state.items()}

    for task, method, path, after_failure in BURSTS:
        rule, hits = burst(method, path, CLIENT_ATTEMPTS)
        with FaultProxy(host, rule, retry_after="0") as proxy:
            failed = run_kiln(tmp_path, task, env=ci_env(proxy.address, "app"))
            assert failed.returncode == 4, f"{task}: {failed.stdout}{failed.stderr}"
            assert len(hits) == CLIENT_ATTEMPTS, f"{task}: the client made {len(hits)} attempts"
            assert f"failed after {CLIENT_ATTEMPTS} attempts: HTTP 503" in failed.stderr, (
                task, failed.stderr)
            assert "rerun later" in failed.stderr and "Traceback" not in failed.stderr, (
                task, failed.stderr)
            assert named(consistent(host)["app"]) == after_failure, task
            rerun = run_kiln(tmp_path, task, env=ci_env(proxy.address, "app"))
            assert rerun.returncode == 0, f"{task} rerun: {rerun.stderr}"
        state = consistent(host)["app"]
        assert named(state) == AFTER_RERUN[task], task
        if "p-9" in state:
            with RegistryClient(host) as client:
                index = client.get_manifest("app", "p-9")
            assert {c.digest for c in media.index_children(index.body)} == {
                children["p-9-amd64"], children["p-9-arm64"]}


def push_multi(tmp_path: Path, host: str, repo: str, tag: str) -> None:
    for arch in ("amd64", "arm64"):
        push_test_image(tmp_path, f"{host}/{repo}:{tag}-{arch}", arch=arch, label=repo)
    with RegistryClient(host) as client:
        reg = promote.Registry(client, repo)
        children = []
        for arch in ("amd64", "arm64"):
            manifest = reg.get(f"{tag}-{arch}")
            config = reg.get_config(media.config_descriptor(manifest.body).digest)
            children.append(promote.Child(arch, f"{tag}-{arch}", manifest, config))
        reg.put(tag, promote.plan_index(children, reg.name))


def test_mirror_through_faults(tmp_path: Path, registry: RegistryServer,
                               capsys: pytest.CaptureFixture[str]) -> None:
    source = registry.address
    push_test_image(tmp_path, f"{source}/library/alpha:1", label="alpha")
    push_multi(tmp_path, source, "library/multi", "latest")
    expected = consistent(source)
    dest = RegistryServer(tmp_path / "dest")
    dest.start()

    def mirror(rate: float) -> str:
        seed = 1000 + int(rate * 100)
        prefix = f"m{int(rate * 100)}"
        work = tmp_path / prefix
        work.mkdir()
        log: list[str] = []
        with FaultProxy(dest.address, seeded_faults(rate, seed, KINDS, max_faults=1),
                        retry_after="1") as proxy:
            config = work / "mirrors.yml"
            config.write_text(f"destination: ${{REGISTRY}}/{prefix}\nretries: 0\nimages:\n"
                              + "".join(f"  - {source}/{name}\n"
                                        for name in ("library/alpha:1", "library/multi:latest")))
            env = {"KILN_REGISTRY": proxy.address}
            until_success(work, dest.address, ["mirror", "--config", str(config)], env, {4}, log)
            state = {repo: tags for repo, tags in consistent(dest.address).items()
                     if repo.startswith(prefix + "/")}
            assert state == {
                f"{prefix}/library/alpha": {"1": expected["library/alpha"]["1"]},
                f"{prefix}/library/multi": {"latest": expected["library/multi"]["latest"]},
            }
            rerun = run_kiln(work, "mirror", "--config", str(config), "--json", env=env)
            assert rerun.returncode == 0, rerun.stderr
            assert [r["action"] for r in json.loads(rerun.stdout)["results"]] == ["skipped"] * 2
            requests = sum(proxy.attempts.values())
            writes = [k for k in proxy.attempts if k[0] in {"PUT", "POST", "PATCH", "DELETE"}]
            assert writes, "the copies went through the proxy"
        assert proxy.faults, f"rate {rate}: no fault injected, the run tested nothing"
        return (f"[fault rate {rate}, seed {seed}] mirror: {len(proxy.faults)} faults in "
                f"{requests} requests; {'; '.join(log)}")

    try:
        each_rate(mirror, capsys, MIRROR_RATES)
    finally:
        dest.stop()


def only_pipeline_and_key_tags(tags: dict[str, str], digest: str) -> bool:
    """``p-9`` and the input-key tag ``k-<hex>`` (docs/tags.md), both on ``digest``."""
    keys = [t for t in tags if re.fullmatch(r"k-[0-9a-f]{32}", t)]
    return len(keys) == 1 and tags == {"p-9": digest, keys[0]: digest}


def test_build_push_through_faults(tmp_path: Path, registry: RegistryServer,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``invoke build`` (real buildah build and push, buildah's own retries) into the faulty
    registry: every run ends pushed or with exit 4, and the tag is never left dangling."""
    require_tool("buildah", "buildah")
    host = registry.address
    storage = tmp_path / "storage"

    def build(rate: float) -> str:
        # 2010 draws no fault among the build's ~17 requests at 0.1; 2011 draws some
        seed = 2001 + int(rate * 100)
        image = f"tiny{int(rate * 100)}"
        project = tmp_path / image
        (project / "builds").mkdir(parents=True)
        (project / "builds" / f"{image}.in").write_text(
            "FROM scratch\nCOPY payload.txt /payload.txt\n")
        (project / "payload.txt").write_text(f"payload of {image}\n" * 200)
        log: list[str] = []
        with FaultProxy(host, seeded_faults(rate, seed, KINDS, max_faults=2),
                        retry_after="1") as proxy:
            env = {"CI": "true", "CI_PIPELINE_ID": "9", "IMAGE_NAME": image,
                   "KILN_REGISTRY": proxy.address, "KILN_STORAGE_DRIVER": "vfs",
                   "KILN_STORAGE_ROOT": str(storage / "root"),
                   "KILN_STORAGE_RUNROOT": str(storage / "runroot"),
                   "SOURCE_DATE_EPOCH": "1700000000"}
            first = until_success(project, host, ["build", "--json"], env, {4}, log)
            digest = json.loads(first)["results"][0]["digest"]
            assert only_pipeline_and_key_tags(consistent(host)[image], digest)
            # rebuilt from the layer cache with the same labels: the same image, pushed again
            again = until_success(project, host, ["build", "--json"], env, {4}, log)
            assert json.loads(again)["results"][0]["digest"] == digest
            assert only_pipeline_and_key_tags(consistent(host)[image], digest)
            requests = sum(proxy.attempts.values())
        assert proxy.faults, f"rate {rate}: no fault injected, the run tested nothing"
        return (f"[fault rate {rate}, seed {seed}] build push: {len(proxy.faults)} faults in "
                f"{requests} requests; {'; '.join(log)}")

    each_rate(build, capsys)


def test_a_registry_that_keeps_failing_is_exit_4_and_nothing_is_written(
        tmp_path: Path, registry: RegistryServer) -> None:
    host = registry.address
    push_test_image(tmp_path, f"{host}/app:p-9")
    before = consistent(host)

    def writes_fail(method: str, path: str, attempt: int) -> str | None:
        return "503" if method in {"PUT", "POST", "PATCH", "DELETE"} else None

    with FaultProxy(host, writes_fail) as proxy:
        done = run_kiln(tmp_path, "tag", env=ci_env(proxy.address, "app"))
    assert done.returncode == 4, done.stderr
    assert "write manifest g-9 failed after 5 attempts: HTTP 503" in done.stderr
    assert "rerun later" in done.stderr and "Traceback" not in done.stderr
    assert consistent(host) == before


def test_consistency_check_catches_a_dangling_tag(tmp_path: Path,
                                                  registry: RegistryServer) -> None:
    """The invariant the suite relies on can fail: a tag whose layer blob is gone."""
    host = registry.address
    push_test_image(tmp_path, f"{host}/app:p-1")
    with RegistryClient(host) as client:
        manifest = client.get_manifest("app", "p-1")
        layer = media.layer_descriptors(manifest.body)[0].digest
        client._http.delete(f"http://{host}/v2/app/blobs/{layer}")
    with pytest.raises(AssertionError):
        consistent(host)
