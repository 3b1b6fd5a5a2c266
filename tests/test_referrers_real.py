"""Signatures and attestations travel with promote's cross-registry copies, through real
docker-registry instances (distribution 2.8: no referrers API, so the ``sha256-<hex>``
fallback tag) and real skopeo. The artifacts are valid OCI artifact manifests with a subject,
pushed here (no signing service is reachable)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import require_tool
from helpers.lifecycle import Seeder, exists, tags_of
from helpers.run import run_kiln
from kiln.local_registry import RegistryServer
from kiln.referrers import cosign_tags, fallback_tag
from kiln.registry.client import RegistryClient

pytestmark = pytest.mark.real


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_tool("skopeo", "skopeo")


def _project(tmp_path: Path, destinations: str, extra: str = "") -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        f"[tool.kiln.images.app]\ndestinations = {destinations}\n{extra}")
    return project


def ci_env(host: str, **extra: str) -> dict[str, str]:
    return {"KILN_REGISTRY": host, "CI": "true", "CI_PIPELINE_ID": "100", "IMAGE_NAME": "app",
            "CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main", **extra}


@pytest.mark.parametrize("multi_arch", [False, True], ids=["image", "index"])
def test_signatures_travel_with_a_cross_registry_copy(tmp_path: Path, registry: RegistryServer,
                                                      multi_arch: bool) -> None:
    host = registry.address
    with RegistryServer(tmp_path / "second") as second, Seeder(host) as seeder:
        if multi_arch:
            children = {a: seeder.image(f"100-{a}", arch=a, tag=f"p-100-{a}")
                        for a in ("amd64", "arm64")}
            image = seeder.index(children, tag="p-100")
            child_sig = seeder.artifact(children["arm64"], "signature of the arm64 child")
            seeder.fallback_index(children["arm64"], [child_sig])
        else:
            image = seeder.image("100", tag="p-100")
        artifacts = seeder.sign(image)  # signature + attestation (fallback tag), cosign .sig
        source_fallback = seeder.client.get_manifest("app", fallback_tag(image.digest))

        project = _project(tmp_path, f'["{host}", "{second.address}/team"]')
        proc = run_kiln(project, "tag", "--json", env=ci_env(host))
        assert proc.returncode == 0, proc.stderr
        with RegistryClient(second.address) as client:
            for artifact in artifacts:  # same bytes, same digest
                assert client.get_manifest("team/app", artifact.digest).body == artifact.body
            copied = client.get_manifest("team/app", fallback_tag(image.digest))
            assert copied.body == source_fallback.body  # the fallback index, byte for byte
            sig = client.get_manifest("team/app", cosign_tags(image.digest)[0])
            assert sig.digest == artifacts[2].digest
            if multi_arch:
                assert client.get_manifest("team/app", child_sig.digest).body == child_sig.body
                assert client.head_manifest(
                    "team/app", fallback_tag(children["arm64"].digest)) is not None
            assert client.get_manifest("team/app", "g-100").digest == image.digest
        results = json.loads(proc.stdout)["results"]
        assert {r["tag"] for r in results} >= {cosign_tags(image.digest)[0],
                                               fallback_tag(image.digest)}
        # the source is untouched
        assert set(tags_of(host)) >= {"p-100", fallback_tag(image.digest),
                                      cosign_tags(image.digest)[0]}


def test_copy_referrers_can_be_turned_off(tmp_path: Path, registry: RegistryServer) -> None:
    host = registry.address
    with RegistryServer(tmp_path / "second") as second, Seeder(host) as seeder:
        image = seeder.image("100", tag="p-100")
        artifacts = seeder.sign(image)
        project = _project(tmp_path, f'["{second.address}/team"]')
        proc = run_kiln(project, "tag", env=ci_env(host, KILN_COPY_REFERRERS="false"))
        assert proc.returncode == 0, proc.stderr
        assert exists(second.address, image.digest, "team/app")
        assert not exists(second.address, artifacts[0].digest, "team/app")
        assert set(tags_of(second.address, "team/app")) == {"g-100", "latest"}


def test_an_artifact_whose_subject_is_missing_stops_the_copy_before_anything_is_written(
        tmp_path: Path, registry: RegistryServer) -> None:
    host = registry.address
    with RegistryServer(tmp_path / "second") as second, Seeder(host) as seeder:
        image = seeder.image("100", tag="p-100")
        stray = seeder.artifact(None, "an artifact without subject")
        seeder.fallback_index(image, [stray])
        project = _project(tmp_path, f'["{second.address}/team"]')
        mark = second.log_mark()
        proc = run_kiln(project, "tag", env=ci_env(host))
        assert proc.returncode == 2
        assert "has no 'subject'" in proc.stderr and stray.digest in proc.stderr
        assert "nothing was copied" in proc.stderr
        # checked before the copy: nothing at all was written at the destination
        assert {r.method for r in second.requests_since(mark)} <= {"GET", "HEAD"}
        assert not exists(second.address, image.digest, "team/app")
