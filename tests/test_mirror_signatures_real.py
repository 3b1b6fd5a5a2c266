"""Signatures and attestations travel with mirrored images (``signatures: true``), through two
real docker-registry instances (distribution 2.8: no referrers API, so the ``sha256-<hex>``
fallback tag) and real skopeo. The artifacts are valid OCI artifact manifests with a
``subject``, pushed here by ``helpers.lifecycle.Seeder`` (no signing service is reachable), and
a cosign-style ``sha256-<hex>.sig`` tag. Request counts come from the registries' access logs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_tool
from helpers.lifecycle import Seeder, exists, tags_of
from kiln.local_registry import AccessRecord, RegistryServer
from kiln.mirror.run import COPIED, FAILED, SKIPPED, MirrorFailed, MirrorReport, mirror
from kiln.referrers import cosign_tags, fallback_tag
from kiln.registry.client import RegistryClient
from kiln.registry.media import Manifest
from kiln.settings import Settings

pytestmark = pytest.mark.real


@pytest.fixture
def source(registry: RegistryServer) -> RegistryServer:
    """The registry standing in for Docker Hub."""
    require_tool("skopeo", "skopeo")
    return registry


@pytest.fixture
def dest(tmp_path: Path) -> Iterator[RegistryServer]:
    """Our registry (the mirror's destination)."""
    with RegistryServer(tmp_path / "dest-registry") as server:
        yield server


def write_config(tmp_path: Path, source: str, *entries: str, top: str = "") -> Path:
    lines = ["destination: ${REGISTRY}/mirror", top, "images:", *entries]
    path = tmp_path / "mirrors.yml"
    path.write_text("\n".join(line for line in lines if line).replace("SRC", source) + "\n",
                    encoding="utf-8")
    return path


def run(tmp_path: Path, dest: RegistryServer, config: Path, **kwargs: object) -> MirrorReport:
    settings = Settings.resolve(tmp_path, {}, {}, {"registry": dest.address})
    return mirror(settings, config=config, live=False, **kwargs)  # type: ignore[arg-type]


def gets(records: list[AccessRecord]) -> list[AccessRecord]:
    return [r for r in records if r.method == "GET"]


def writes(records: list[AccessRecord]) -> list[AccessRecord]:
    return [r for r in records if r.method not in {"GET", "HEAD"}]


def manifest(host: str, repository: str, reference: str) -> Manifest:
    with RegistryClient(host) as client:
        return client.get_manifest(repository, reference)


# ---------------------------------------------------------------------------------------------

def test_signed_image_arrives_with_its_artifacts_and_a_rerun_costs_no_get(
        source: RegistryServer, dest: RegistryServer, tmp_path: Path) -> None:
    with Seeder(source.address, "library/signed") as seeder:
        image = seeder.image("signed v1", tag="1")
        signature, attestation, cosign = seeder.sign(image)  # fallback index + cosign .sig
    fallback = manifest(source.address, "library/signed", fallback_tag(image.digest))
    config = write_config(tmp_path, source.address, "  - source: SRC/library/signed:1",
                          "    signatures: true")

    report = run(tmp_path, dest, config)
    (outcome,) = report.outcomes
    assert outcome.status == COPIED, outcome.message
    repo = "mirror/library/signed"
    for artifact in (signature, attestation, cosign):  # same bytes, so the same digest
        assert manifest(dest.address, repo, artifact.digest).body == artifact.body
    assert manifest(dest.address, repo, cosign_tags(image.digest)[0]).digest == cosign.digest
    # the referrers fallback index byte for byte: the destination has no referrers API either
    assert manifest(dest.address, repo, fallback_tag(image.digest)).body == fallback.body
    assert manifest(dest.address, repo, "1").digest == image.digest
    assert outcome.pulls == 1 + 4  # the image, the fallback index, 3 artifacts
    assert {a.status for a in outcome.artifacts} == {COPIED}

    source_mark, dest_mark = source.log_mark(), dest.log_mark()
    report = run(tmp_path, dest, config)
    (outcome,) = report.outcomes
    assert outcome.status == SKIPPED and outcome.pulls == 0, outcome.message
    assert {a.status for a in outcome.artifacts} == {"up to date"}
    assert gets(source.requests_since(source_mark)) == []  # HEADs only: no pull, no list
    assert writes(dest.requests_since(dest_mark)) == []
    assert report.pulls() == {source.address: 0}


def test_index_children_signatures_travel_and_the_json_lists_them(
        source: RegistryServer, dest: RegistryServer, tmp_path: Path) -> None:
    with Seeder(source.address, "library/multi") as seeder:
        children = {a: seeder.image(f"multi {a}", arch=a) for a in ("amd64", "arm64")}
        index = seeder.index(children, tag="latest")
        child_signature = seeder.artifact(children["arm64"], "signature of the arm64 child")
        seeder.fallback_index(children["arm64"], [child_signature])
        top = seeder.artifact(index, "cosign signature of the index",
                              tag=cosign_tags(index.digest)[0])
    config = write_config(tmp_path, source.address, "  - source: SRC/library/multi:latest",
                          top="signatures: true")
    report = run(tmp_path, dest, config)
    (outcome,) = report.outcomes
    assert outcome.status == COPIED, outcome.message
    repo = "mirror/library/multi"
    assert manifest(dest.address, repo, child_signature.digest).body == child_signature.body
    assert manifest(dest.address, repo, cosign_tags(index.digest)[0]).digest == top.digest
    assert manifest(dest.address, repo, "latest").digest == index.digest
    (entry,) = report.to_json()["images"]  # type: ignore[misc]
    names = {a["name"]: a for a in entry["artifacts"]}
    assert names[cosign_tags(index.digest)[0]]["digest"] == top.digest
    assert names[fallback_tag(children["arm64"].digest)]["status"] == COPIED
    # up to date: the index and its children's artifacts cost no pull; the only GET is the
    # referrers list of the index (which has no fallback tag), asked once per registry and run
    mark = source.log_mark()
    (outcome,) = run(tmp_path, dest, config).outcomes
    assert outcome.status == SKIPPED and outcome.pulls == 0
    assert [r.path for r in gets(source.requests_since(mark))] == [
        f"/v2/library/multi/referrers/{index.digest}"]


def test_an_artifact_without_subject_fails_its_image_only_with_nothing_written(
        source: RegistryServer, dest: RegistryServer, tmp_path: Path) -> None:
    with Seeder(source.address, "library/bad") as bad, \
            Seeder(source.address, "library/good") as good:
        image = bad.image("bad v1", tag="1")
        stray = bad.artifact(None, "an artifact without subject")
        bad.fallback_index(image, [stray])
        fine = good.image("good v1", tag="1")
        good.sign(fine)
    config = write_config(tmp_path, source.address, "  - source: SRC/library/bad:1",
                          "  - source: SRC/library/good:1", top="signatures: true")
    dest_mark = dest.log_mark()
    with pytest.raises(MirrorFailed) as info:
        run(tmp_path, dest, config)
    assert info.value.exit_code == 2
    report_text = str(info.value)
    assert "library/bad:1" in report_text and "library/good" not in report_text
    # nothing at all was written into the bad image's repository; the good one arrived
    assert not [r for r in writes(dest.requests_since(dest_mark)) if "/library/bad/" in r.path]
    assert not exists(dest.address, image.digest, "mirror/library/bad")
    assert exists(dest.address, fine.digest, "mirror/library/good")
    assert cosign_tags(fine.digest)[0] in tags_of(dest.address, "mirror/library/good")


def test_an_artifact_of_another_image_is_named_with_what_to_do(
        source: RegistryServer, dest: RegistryServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    with Seeder(source.address, "library/other") as seeder:
        image = seeder.image("other v1", tag="1")
        another = seeder.image("another image")
        wrong = seeder.artifact(another, "signature of another image")
        seeder.fallback_index(image, [wrong])
    config = write_config(tmp_path, source.address, "  - source: SRC/library/other:1",
                          "    signatures: true")
    with pytest.raises(MirrorFailed) as info:
        run(tmp_path, dest, config)
    assert info.value.exit_code == 2
    summary = capsys.readouterr().out
    assert "nothing was written for this image" in summary
    assert f"@{wrong.digest} is listed as an artifact of {image.digest} but its subject is " \
        f"{another.digest}" in summary
    assert "re-push the artifact" in summary
    assert not exists(dest.address, image.digest, "mirror/library/other")


def test_signatures_off_copies_the_image_alone_and_looks_for_nothing(
        source: RegistryServer, dest: RegistryServer, tmp_path: Path) -> None:
    with Seeder(source.address, "library/plain") as seeder:
        image = seeder.image("plain v1", tag="1")
        seeder.sign(image)
    config = write_config(tmp_path, source.address, "  - source: SRC/library/plain:1")
    source_mark = source.log_mark()
    report = run(tmp_path, dest, config)
    assert [o.status for o in report.outcomes] == [COPIED]
    assert set(tags_of(dest.address, "mirror/library/plain")) == {"1"}
    looked = [r.path for r in source.requests_since(source_mark) if "sha256-" in r.path
              or "/referrers/" in r.path]
    assert looked == []


def test_dry_run_shows_the_artifacts_and_writes_nothing(
        source: RegistryServer, dest: RegistryServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    with Seeder(source.address, "library/signed") as seeder:
        image = seeder.image("signed v1", tag="1")
        seeder.sign(image)
    config = write_config(tmp_path, source.address, "  - source: SRC/library/signed:1",
                          "    signatures: true")
    source_mark, dest_mark = source.log_mark(), dest.log_mark()
    report = run(tmp_path, dest, config, dry_run=True)
    (outcome,) = report.outcomes
    assert outcome.status == "would copy"
    assert gets(source.requests_since(source_mark)) == []
    assert writes(dest.requests_since(dest_mark)) == []
    shown = capsys.readouterr().out
    assert "mirror plan (dry run: HEAD requests and referrers lists only)" in shown
    assert "2 artifact(s): 2 to copy" in shown
    index_tag, sig_tag = fallback_tag(image.digest), cosign_tags(image.digest)[0]
    assert f"artifact {index_tag[:19]}... " in shown and "would read (1 pull)" in shown
    assert f"artifact {sig_tag[:19]}...sig " in shown and "would copy (1 pull)" in shown
    assert FAILED not in [o.status for o in report.outcomes]
