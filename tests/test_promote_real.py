"""manifest, tag, deploy-production, deploy-mr and stop-mr against real docker-registry instances,
with images pushed by real skopeo, run as invoke tasks. Request counts come from the registry's
own access log."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from conftest import require_tool
from helpers.images import inspect_raw, push_test_image, skopeo
from helpers.run import run_kiln
from kiln.local_registry import AccessRecord, RegistryServer
from kiln.registry import media
from kiln.registry.client import RegistryClient
from kiln.registry.media import Manifest

pytestmark = pytest.mark.real


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("skopeo", "skopeo")


def ci_env(host: str, pipeline: str = "100", **extra: str) -> dict[str, str]:
    env = {"KILN_REGISTRY": host, "CI": "true", "CI_PIPELINE_ID": pipeline,
           "IMAGE_NAME": "app"}
    env.update(extra)
    return env


def kinds(records: list[AccessRecord]) -> Counter[tuple[str, str]]:
    return Counter((r.method, r.kind) for r in records)


def tags_of(host: str, repo: str = "app") -> dict[str, str]:
    """tag -> digest, read with a fresh client."""
    with RegistryClient(host) as client:
        result = {}
        for tag in client.list_tags(repo):
            info = client.head_manifest(repo, tag)
            assert info is not None
            result[tag] = info.digest
        return result


def push_arches(tmp: Path, host: str, pipeline: str = "100", fmt: str = "v2s2",
                arches: tuple[str, ...] = ("amd64", "arm64")) -> None:
    for arch in arches:
        push_test_image(tmp, f"{host}/app:p-{pipeline}-{arch}", arch=arch, fmt=fmt,
                        variant="v8" if arch == "arm64" else None, label=pipeline)


# -- manifest --------------------------------------------------------------------------------


def test_manifest_children_are_the_per_arch_digests(tmp_path: Path,
                                                    registry: RegistryServer) -> None:
    host = registry.address
    push_arches(tmp_path, host)
    per_arch = tags_of(host)
    mark = registry.log_mark()
    proc = run_kiln(tmp_path, "manifest", env=ci_env(host, IMAGE_ARCHES="amd64 aarch64"))
    assert proc.returncode == 0, proc.stderr
    records = registry.requests_since(mark)
    # one GET per arch + its config blob, one PUT; nothing else (no layer request at all)
    assert kinds(records) == {("GET", "manifest"): 2, ("GET", "blob"): 2, ("PUT", "manifest"): 1}
    with RegistryClient(host) as client:
        configs = {media.config_descriptor(client.get_manifest("app", f"p-100-{a}").body).digest
                   for a in ("amd64", "arm64")}
    assert {r.path.rsplit("/", 1)[1] for r in records if r.kind == "blob"} == configs

    raw = inspect_raw(f"{host}/app:p-100")
    index = json.loads(raw)
    assert index["mediaType"] == media.DOCKER_MANIFEST_LIST
    children = {c["platform"]["architecture"]: c for c in index["manifests"]}
    assert children["amd64"]["digest"] == per_arch["p-100-amd64"]
    assert children["arm64"]["digest"] == per_arch["p-100-arm64"]
    assert children["arm64"]["platform"] == {"architecture": "arm64", "os": "linux",
                                             "variant": "v8"}
    # skopeo accepts it: copy all architectures elsewhere, digests preserved
    skopeo("copy", "--all", "--preserve-digests", "--src-tls-verify=false",
           "--dest-tls-verify=false", f"docker://{host}/app:p-100", f"docker://{host}/copy:x")
    assert inspect_raw(f"{host}/copy:x") == raw
    # rerun converges to the same index
    again = run_kiln(tmp_path, "manifest", env=ci_env(host, IMAGE_ARCHES="amd64 arm64"))
    assert again.returncode == 0, again.stderr
    assert inspect_raw(f"{host}/app:p-100") == raw


def test_manifest_over_oci_children_is_an_oci_index(tmp_path: Path,
                                                   registry: RegistryServer) -> None:
    host = registry.address
    push_arches(tmp_path, host, fmt="oci")
    proc = run_kiln(tmp_path, "manifest", env=ci_env(host, IMAGE_ARCHES="amd64 arm64"))
    assert proc.returncode == 0, proc.stderr
    index = json.loads(inspect_raw(f"{host}/app:p-100"))
    assert index["mediaType"] == media.OCI_INDEX
    assert {c["mediaType"] for c in index["manifests"]} == {media.OCI_MANIFEST}


def test_manifest_refuses_a_mislabelled_arch(tmp_path: Path, registry: RegistryServer) -> None:
    host = registry.address
    push_test_image(tmp_path, f"{host}/app:p-100-amd64", arch="amd64")
    push_test_image(tmp_path, f"{host}/app:p-100-arm64", arch="arm64", config_arch="amd64")
    mark = registry.log_mark()
    proc = run_kiln(tmp_path, "manifest", env=ci_env(host, IMAGE_ARCHES="amd64 arm64"))
    assert proc.returncode == 2
    assert "p-100-arm64 is mislabelled" in proc.stderr and "'amd64'" in proc.stderr
    assert "nothing was written" in proc.stderr
    methods = {r.method for r in registry.requests_since(mark)}
    assert methods <= {"GET", "HEAD"}
    assert "p-100" not in tags_of(host)


def test_manifest_with_a_missing_arch_writes_nothing(tmp_path: Path,
                                                    registry: RegistryServer) -> None:
    host = registry.address
    push_test_image(tmp_path, f"{host}/app:p-100-amd64", arch="amd64")
    mark = registry.log_mark()
    proc = run_kiln(tmp_path, "manifest", env=ci_env(host, IMAGE_ARCHES="amd64 s390x"))
    assert proc.returncode == 2
    assert "p-100-s390x cannot be read" in proc.stderr and "build-arch --arch s390x" in proc.stderr
    assert {r.method for r in registry.requests_since(mark)} <= {"GET", "HEAD"}
    assert "p-100" not in tags_of(host)


# -- tag / deploy ----------------------------------------------------------------------------


def test_tag_default_branch_is_one_get_and_one_put_per_tag(tmp_path: Path,
                                                           registry: RegistryServer) -> None:
    host = registry.address
    push_test_image(tmp_path, f"{host}/app:p-100", arch="amd64")
    source = tags_of(host)["p-100"]
    mark = registry.log_mark()
    env = ci_env(host, CI_COMMIT_BRANCH="main", CI_DEFAULT_BRANCH="main")
    proc = run_kiln(tmp_path, "tag", env=env)
    assert proc.returncode == 0, proc.stderr
    # one GET, its config (the credential scan), one PUT per tag: no layer request at all
    assert kinds(registry.requests_since(mark)) == {("GET", "manifest"): 1, ("GET", "blob"): 1,
                                                    ("PUT", "manifest"): 2}
    assert tags_of(host) == {"p-100": source, "g-100": source, "latest": source}


def test_tag_copies_a_multi_arch_index_untouched(tmp_path: Path,
                                                registry: RegistryServer) -> None:
    host = registry.address
    push_arches(tmp_path, host)
    assert run_kiln(tmp_path, "manifest",
                    env=ci_env(host, IMAGE_ARCHES="amd64 arm64")).returncode == 0
    raw = inspect_raw(f"{host}/app:p-100")
    env = ci_env(host, CI_COMMIT_TAG="v1.2.3", CI_MERGE_REQUEST_IID="9")
    proc = run_kiln(tmp_path, "tag", env=env)
    assert proc.returncode == 0, proc.stderr
    for tag in ("g-100", "v1.2.3", "mr-9"):
        assert inspect_raw(f"{host}/app:{tag}") == raw
    assert "latest" not in tags_of(host)


def test_tag_with_an_invalid_git_tag_writes_nothing(tmp_path: Path,
                                                    registry: RegistryServer) -> None:
    host = registry.address
    push_test_image(tmp_path, f"{host}/app:p-100", arch="amd64")
    mark = registry.log_mark()
    proc = run_kiln(tmp_path, "tag", env=ci_env(host, CI_COMMIT_TAG="feature/x"))
    assert proc.returncode == 2
    assert "git tag 'feature/x' is not a valid image tag" in proc.stderr
    assert registry.requests_since(mark) == []


def test_tag_without_source_image_writes_nothing(tmp_path: Path,
                                                 registry: RegistryServer) -> None:
    host = registry.address
    proc = run_kiln(tmp_path, "tag", env=ci_env(host))
    assert proc.returncode == 2
    assert "app:p-100 cannot be read" in proc.stderr
    assert tags_of(host) == {}


def test_deploy_production_and_mr(tmp_path: Path, registry: RegistryServer) -> None:
    host = registry.address
    push_test_image(tmp_path, f"{host}/app:p-100", arch="amd64")
    source = tags_of(host)["p-100"]
    assert run_kiln(tmp_path, "deploy-production", env=ci_env(host)).returncode == 0
    proc = run_kiln(tmp_path, "deploy-mr", "--mr", "3", env=ci_env(host))
    assert proc.returncode == 0, proc.stderr
    assert tags_of(host) == {"p-100": source, "production": source, "mr-3": source}
    missing = run_kiln(tmp_path, "deploy-mr", env=ci_env(host))
    assert missing.returncode == 2 and "CI_MERGE_REQUEST_IID" in missing.stderr


# -- stop-mr ---------------------------------------------------------------------------------


def _tag_three(tmp_path: Path, registry: RegistryServer) -> tuple[str, str]:
    host = registry.address
    push_test_image(tmp_path, f"{host}/app:p-100", arch="amd64")
    push_test_image(tmp_path, f"{host}/app:other", arch="amd64", label="other")
    with RegistryClient(host) as client:
        source = client.get_manifest("app", "p-100")
        for tag in ("mr-7", "g-100", "latest"):
            client.put_manifest("app", tag, source)
    return host, source.digest


def test_stop_mr_removes_only_its_tag(tmp_path: Path, registry: RegistryServer) -> None:
    host, digest = _tag_three(tmp_path, registry)
    before = tags_of(host)
    proc = run_kiln(tmp_path, "stop-mr", "--image", "app",
                    env=ci_env(host, CI_MERGE_REQUEST_IID="7"))
    assert proc.returncode == 0, proc.stderr
    after = tags_of(host)
    expected = dict(before)
    del expected["mr-7"]
    assert after == expected
    assert after["g-100"] == after["latest"] == after["p-100"] == digest
    with RegistryClient(host) as client:
        assert client.head_manifest("app", digest) is not None
    # rerun: nothing to do, success
    again = run_kiln(tmp_path, "stop-mr", env=ci_env(host, CI_MERGE_REQUEST_IID="7"))
    assert again.returncode == 0 and "absent" in again.stderr
    assert tags_of(host) == expected


def test_stop_mr_finishes_an_interrupted_run(tmp_path: Path, registry: RegistryServer) -> None:
    host, digest = _tag_three(tmp_path, registry)
    with RegistryClient(host) as client:  # the state after "PUT throwaway", before "DELETE"
        client.put_blob("app", media.EMPTY_JSON)
        leftover = Manifest.from_bytes(media.throwaway_manifest("crashed"), media.OCI_MANIFEST)
        client.put_manifest("app", "mr-7", leftover)
    proc = run_kiln(tmp_path, "stop-mr", env=ci_env(host, CI_MERGE_REQUEST_IID="7"))
    assert proc.returncode == 0, proc.stderr
    after = tags_of(host)
    assert "mr-7" not in after and after["g-100"] == after["latest"] == digest
    with RegistryClient(host) as client:
        assert client.head_manifest("app", leftover.digest) is None


def test_skopeo_delete_would_have_removed_the_siblings(tmp_path: Path,
                                                       registry: RegistryServer) -> None:
    """Why stop-mr cannot simply delete: the peer way removes g-100 and latest too."""
    host, digest = _tag_three(tmp_path, registry)
    skopeo("delete", "--tls-verify=false", f"docker://{host}/app:mr-7")
    assert set(tags_of(host)) == {"other"}


# -- dry run -----------------------------------------------------------------------------------


def test_dry_run_prints_operations_and_writes_nothing(tmp_path: Path,
                                                      registry: RegistryServer) -> None:
    host, digest = _tag_three(tmp_path, registry)
    push_arches(tmp_path, host)
    before = tags_of(host)
    mark = registry.log_mark()
    env = ci_env(host, CI_COMMIT_BRANCH="main", CI_DEFAULT_BRANCH="main",
                 CI_MERGE_REQUEST_IID="7", IMAGE_ARCHES="amd64 arm64")
    for task in ("manifest", "tag", "deploy-production", "deploy-mr", "stop-mr"):
        proc = run_kiln(tmp_path, task, "--dry-run", env=env)
        assert proc.returncode == 0, proc.stderr
        assert f"{host}/app" in proc.stdout
    tag_plan = run_kiln(tmp_path, "tag", "--dry-run", env=env).stdout
    assert f"PUT    {host}/app:g-100" in tag_plan and f"PUT    {host}/app:latest" in tag_plan
    stop_plan = run_kiln(tmp_path, "stop-mr", "--dry-run", env=env).stdout
    assert f"DELETE {host}/app@sha256:" in stop_plan
    assert {r.method for r in registry.requests_since(mark)} <= {"GET", "HEAD"}
    assert tags_of(host) == before


# -- several destinations ------------------------------------------------------------------


def _project(tmp_path: Path, table: str) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(f"[tool.kiln.images.app]\n{table}\n")
    return project


def test_tag_every_destination(tmp_path: Path, registry: RegistryServer) -> None:
    host = registry.address
    with RegistryServer(tmp_path / "second") as second:
        push_arches(tmp_path, host)
        assert run_kiln(tmp_path, "manifest",
                        env=ci_env(host, IMAGE_ARCHES="amd64 arm64")).returncode == 0
        raw = inspect_raw(f"{host}/app:p-100")
        project = _project(tmp_path, f'destinations = ["{host}", "{second.address}/team"]')
        env = ci_env(host, CI_COMMIT_BRANCH="main", CI_DEFAULT_BRANCH="main")
        proc = run_kiln(project, "tag", env=env)
        assert proc.returncode == 0, proc.stderr
        for ref in (f"{host}/app:g-100", f"{host}/app:latest",
                    f"{second.address}/team/app:g-100", f"{second.address}/team/app:latest"):
            assert inspect_raw(ref) == raw, ref
        # second run: the manifest is there, so only manifest requests at the second registry
        mark = second.log_mark()
        assert run_kiln(project, "tag", env=env).returncode == 0
        assert {r.kind for r in second.requests_since(mark)} == {"manifest"}


def test_private_image_never_goes_to_a_public_registry(tmp_path: Path,
                                                       registry: RegistryServer) -> None:
    host = registry.address
    with RegistryServer(tmp_path / "public") as public:
        push_test_image(tmp_path, f"{host}/app:p-100", arch="amd64")
        project = _project(tmp_path, f'destinations = ["{host}", "{public.address}/org"]\n'
                                     "private = true")
        mark, public_mark = registry.log_mark(), public.log_mark()
        env = ci_env(host, KILN_PUBLIC_REGISTRIES=public.address)
        proc = run_kiln(project, "deploy-production", env=env)
        assert proc.returncode == 2
        assert "private" in proc.stderr and public.address in proc.stderr
        assert registry.requests_since(mark) == [] and public.requests_since(public_mark) == []
