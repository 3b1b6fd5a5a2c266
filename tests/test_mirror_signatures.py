"""Mirroring signatures and attestations, with two registries in memory: the cases the real
registries here cannot show (distribution 2.8 has no referrers API), and the request counts that
make ``signatures:`` affordable (a pull only for what the destination lacks; a registry without
the referrers API is asked once per run).

The registries are in memory behind the same :class:`kiln.promote.Registry` views real runs use,
so discovery, the subject check and the copy are kiln's own code."""

from __future__ import annotations

import json

from kiln import promote
from kiln.errors import RegistryError
from kiln.mirror.config import RateLimitPolicy, parse_config
from kiln.mirror.ratelimit import RateLimitGate
from kiln.mirror.run import COPIED, FAILED, SKIPPED, WOULD_COPY, MirrorReport, run_mirror
from kiln.referrers import OCI_INDEX, cosign_tags, fallback_tag
from kiln.registry import media
from kiln.registry.media import Manifest, ManifestInfo
from kiln.registry.reference import ImageRef

SRC, DST = "src.example.com", "dst.example.com"
SIGNATURE = "application/vnd.dev.kiln.test.signature"


class MemoryRegistry:
    """One registry: what :class:`kiln.promote.Registry` asks of a client, in memory. With
    ``api``, the referrers API answers from the manifests' ``subject``; without, it is a 404."""

    def __init__(self, host: str, *, api: bool) -> None:
        self.host = host
        self.api = api
        self.manifests: dict[tuple[str, str], Manifest] = {}
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.log: list[tuple[str, str]] = []  # (method, what)

    # -- seeding
    def store(self, repo: str, manifest: Manifest, *tags: str) -> Manifest:
        for reference in (manifest.digest, *tags):
            self.manifests[(repo, reference)] = manifest
        return manifest

    # -- the client interface
    def head_manifest(self, repo: str, ref: str) -> ManifestInfo | None:
        self.log.append(("HEAD", ref))
        found = self.manifests.get((repo, ref))
        return None if found is None else ManifestInfo(found.digest, found.media_type,
                                                       len(found.body))

    def get_manifest(self, repo: str, ref: str) -> Manifest:
        self.log.append(("GET", ref))
        if (repo, ref) not in self.manifests:
            raise RegistryError(f"{self.host}/{repo}:{ref} not found")
        return self.manifests[(repo, ref)]

    def put_manifest(self, repo: str, ref: str, manifest: Manifest) -> str:
        self.log.append(("PUT", ref))
        self.store(repo, manifest, ref)
        return manifest.digest

    def referrers(self, repo: str, digest: str) -> bytes | None:
        self.log.append(("GET", f"referrers/{digest}"))
        if not self.api:
            return None
        entries = []
        for (r, ref), manifest in sorted(self.manifests.items()):
            if r != repo or ref != manifest.digest:
                continue
            subject = json.loads(manifest.body).get("subject") or {}
            if subject.get("digest") == digest:
                entries.append({"mediaType": manifest.media_type, "digest": manifest.digest,
                                "size": len(manifest.body),
                                "artifactType": json.loads(manifest.body).get("artifactType")})
        return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                           "manifests": entries}).encode()

    def blob_exists(self, repo: str, digest: str) -> bool:
        return (repo, digest) in self.blobs

    def get_blob(self, repo: str, digest: str) -> bytes:
        self.log.append(("GET", f"blob {digest}"))
        return self.blobs[(repo, digest)]

    def put_blob(self, repo: str, data: bytes) -> str:
        digest = media.digest_of(data)
        self.log.append(("PUT", f"blob {digest}"))
        self.blobs[(repo, digest)] = data
        return digest

    def manifest_gets(self) -> list[str]:
        return [what for method, what in self.log
                if method == "GET" and not what.startswith(("referrers/", "blob "))]

    def writes(self) -> list[str]:
        return [what for method, what in self.log if method == "PUT"]


class Registries:
    """The runner's registries (HEAD, GET, PUT by reference) and the views artifacts use."""

    def __init__(self, *, source_api: bool = False, destination_api: bool = False) -> None:
        self.hosts = {SRC: MemoryRegistry(SRC, api=source_api),
                      DST: MemoryRegistry(DST, api=destination_api)}

    def head(self, ref: ImageRef, reference: str) -> ManifestInfo | None:
        return self.hosts[ref.host].head_manifest(ref.repository, reference)

    def list_tags(self, ref: ImageRef) -> list[str]:
        raise AssertionError("no tag sets here")

    def get_manifest(self, ref: ImageRef, reference: str) -> Manifest:
        return self.hosts[ref.host].get_manifest(ref.repository, reference)

    def put_manifest(self, ref: ImageRef, reference: str, manifest: Manifest) -> str:
        return self.hosts[ref.host].put_manifest(ref.repository, reference, manifest)

    def view(self, ref: ImageRef, *, dry_run: bool) -> promote.Registry:
        return promote.Registry(self.hosts[ref.host], ref.repository,  # type: ignore[arg-type]
                                dry_run=dry_run)


class Copier:
    """skopeo, as far as the runner can tell: the manifest (one source GET) and its blobs."""

    def __init__(self, registries: Registries) -> None:
        self.registries = registries

    def copy(self, source: ImageRef, destination: ImageRef) -> str:
        assert source.digest is not None and destination.tag is not None
        src, dst = self.registries.hosts[source.host], self.registries.hosts[destination.host]
        manifest = src.get_manifest(source.repository, source.digest)
        for layer in media.layer_descriptors(manifest.body):
            dst.put_blob(destination.repository, src.blobs[(source.repository, layer.digest)])
        dst.put_manifest(destination.repository, destination.tag, manifest)
        return manifest.digest


def image(registry: MemoryRegistry, label: str, tag: str = "1") -> Manifest:
    layer = f"layer of {label}".encode()
    registry.blobs[("library/app", media.digest_of(layer))] = layer
    body = json.dumps({"schemaVersion": 2, "mediaType": media.OCI_MANIFEST,
                       "config": {"mediaType": media.OCI_CONFIG, "digest": "sha256:" + "0" * 64,
                                  "size": 2},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                   "digest": media.digest_of(layer), "size": len(layer)}]}
                      ).encode()
    manifest = Manifest.from_bytes(body, media.OCI_MANIFEST)
    return registry.store("library/app", manifest, tag)


def artifact(registry: MemoryRegistry, subject: Manifest | None, payload: str,
             tag: str | None = None) -> Manifest:
    """An OCI artifact manifest (empty config, one payload layer) referring to ``subject``."""
    data = payload.encode()
    registry.blobs[("library/app", media.digest_of(data))] = data
    registry.blobs[("library/app", media.digest_of(media.EMPTY_JSON))] = media.EMPTY_JSON
    document: dict[str, object] = {
        "schemaVersion": 2, "mediaType": media.OCI_MANIFEST, "artifactType": SIGNATURE,
        "config": {"mediaType": media.OCI_EMPTY, "digest": media.digest_of(media.EMPTY_JSON),
                   "size": 2},
        "layers": [{"mediaType": SIGNATURE, "digest": media.digest_of(data), "size": len(data)}]}
    if subject is not None:
        document["subject"] = {"mediaType": subject.media_type, "digest": subject.digest,
                               "size": len(subject.body)}
    manifest = Manifest.from_bytes(json.dumps(document).encode(), media.OCI_MANIFEST)
    return registry.store("library/app", manifest, *((tag,) if tag else ()))


def run(registries: Registries, text: str, *, dry_run: bool = False) -> MirrorReport:
    config = parse_config(text, "mirrors.yml", {"REGISTRY": DST})
    return run_mirror(config.images, head=registries.head, copier=Copier(registries),
                      gate=RateLimitGate(RateLimitPolicy(floor=0)), jobs=1, dry_run=dry_run,
                      registries=registries)


SIGNED = "signatures: true\nimages:\n  - source: src.example.com/library/app:1\n"


def test_referrers_api_source_to_a_destination_without_it_gets_the_fallback_index() -> None:
    registries = Registries(source_api=True)
    src = registries.hosts[SRC]
    subject = image(src, "v1")
    signature = artifact(src, subject, "signature")
    cosign = artifact(src, subject, "cosign signature", tag=cosign_tags(subject.digest)[0])
    (outcome,) = run(registries, SIGNED).outcomes
    assert outcome.status == COPIED, outcome.message
    dst = registries.hosts[DST]
    assert dst.manifests[("mirror/library/app", signature.digest)] == signature
    assert dst.manifests[("mirror/library/app", cosign_tags(subject.digest)[0])] == cosign
    index = json.loads(dst.manifests[("mirror/library/app", fallback_tag(subject.digest))].body)
    # the cosign signature has a subject too, so the API lists it along with the other one
    assert {e["digest"] for e in index["manifests"]} == {signature.digest, cosign.digest}
    assert outcome.pulls == 1 + 2  # the image, then each artifact once (cosign's is one of them)

    # a rerun: the image by HEAD, its artifacts by HEAD and one referrers list; no pull
    src.log.clear()
    dst.log.clear()
    (outcome,) = run(registries, SIGNED).outcomes
    assert outcome.status == SKIPPED and outcome.pulls == 0
    assert src.manifest_gets() == [] and dst.writes() == []
    assert {a.status for a in outcome.artifacts} == {"up to date"}


def test_fallback_source_to_a_destination_with_the_api_keeps_the_fallback_tag() -> None:
    registries = Registries(destination_api=True)
    src = registries.hosts[SRC]
    subject = image(src, "v1")
    signature = artifact(src, subject, "signature")
    index_body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": signature.media_type, "digest": signature.digest,
         "size": len(signature.body), "artifactType": SIGNATURE}]}).encode()
    src.store("library/app", Manifest.from_bytes(index_body, OCI_INDEX),
              fallback_tag(subject.digest))
    (outcome,) = run(registries, SIGNED).outcomes
    assert outcome.status == COPIED, outcome.message
    dst = registries.hosts[DST]
    assert dst.manifests[("mirror/library/app", fallback_tag(subject.digest))].body == index_body
    assert src.log.count(("GET", f"referrers/{subject.digest}")) == 0  # the tag said it all
    src.log.clear()
    (outcome,) = run(registries, SIGNED).outcomes
    assert outcome.pulls == 0 and src.manifest_gets() == []


def test_a_registry_without_the_api_is_asked_once_per_run() -> None:
    registries = Registries()
    src = registries.hosts[SRC]
    for tag in ("1", "2", "3"):
        image(src, f"v{tag}", tag)
    text = "signatures: true\nimages:\n" + "".join(
        f"  - source: src.example.com/library/app:{tag}\n" for tag in ("1", "2", "3"))
    report = run(registries, text)
    assert [o.status for o in report.outcomes] == [COPIED] * 3
    assert [what for method, what in src.log if what.startswith("referrers/")] != []
    assert len([what for _, what in src.log if what.startswith("referrers/")]) == 1
    assert all("no signatures or attestations found" in o.message for o in report.outcomes)


def test_an_artifact_without_subject_fails_its_image_with_nothing_written() -> None:
    registries = Registries(source_api=True)
    src = registries.hosts[SRC]
    subject = image(src, "v1")
    artifact(src, subject, "fine")
    # the API lists an artifact whose manifest does not name the image (an inconsistent index)
    stray = artifact(src, None, "no subject")
    listed = src.referrers

    def with_stray(repo: str, digest: str) -> bytes | None:
        body = json.loads(listed(repo, digest) or b"{}")
        body["manifests"].append({"mediaType": stray.media_type, "digest": stray.digest,
                                  "size": len(stray.body)})
        return json.dumps(body).encode()

    src.referrers = with_stray  # type: ignore[method-assign]
    (outcome,) = run(registries, SIGNED).outcomes
    assert outcome.status == FAILED and outcome.exit_code == 2
    assert f"@{stray.digest} is listed as an artifact of {subject.digest} but has no " \
        "'subject'" in outcome.message
    assert "nothing was written for this image" in outcome.message
    assert registries.hosts[DST].writes() == []


def test_dry_run_lists_artifacts_and_reads_no_manifest() -> None:
    registries = Registries(source_api=True)
    src = registries.hosts[SRC]
    subject = image(src, "v1")
    signature = artifact(src, subject, "signature")
    report = run(registries, SIGNED, dry_run=True)
    (outcome,) = report.outcomes
    assert outcome.status == WOULD_COPY
    assert [(a.digest, a.status) for a in outcome.artifacts] == [
        (signature.digest, "would copy (1 pull)")]
    assert src.manifest_gets() == [] and registries.hosts[DST].writes() == []


def test_signatures_off_looks_for_nothing() -> None:
    registries = Registries(source_api=True)
    src = registries.hosts[SRC]
    subject = image(src, "v1")
    artifact(src, subject, "signature")
    (outcome,) = run(registries, "images:\n  - source: src.example.com/library/app:1\n").outcomes
    assert outcome.status == COPIED and outcome.artifacts == ()
    assert [what for _, what in src.log if "referrers" in what or "sha256-" in what] == []
    assert "artifacts" not in run(registries, "images:\n  - src.example.com/library/app:1\n"
                                  ).to_json()["images"][0]  # type: ignore[index]


class ChildCopier(Copier):
    """skopeo's per-digest copy too, so an index is copied child by child (as in real runs)."""

    def copy_to(self, source: str, destination: str, what: str) -> str:
        from kiln.registry.reference import parse_reference

        src_ref = parse_reference(source.removeprefix("docker://"))
        dst_ref = parse_reference(destination.removeprefix("docker://"))
        assert src_ref.digest is not None
        manifest = self.registries.hosts[src_ref.host].get_manifest(src_ref.repository,
                                                                     src_ref.digest)
        self.registries.hosts[dst_ref.host].store(dst_ref.repository, manifest)
        return manifest.digest


def index_of(registry: MemoryRegistry, children: list[Manifest], tag: str) -> Manifest:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": c.media_type, "digest": c.digest, "size": len(c.body),
         "platform": {"architecture": arch, "os": "linux"}}
        for arch, c in zip(("amd64", "arm64"), children, strict=True)]}).encode()
    return registry.store("library/app", Manifest.from_bytes(body, OCI_INDEX), tag)


def test_a_bad_artifact_of_an_index_child_stops_the_index_before_anything_is_written() -> None:
    registries = Registries(source_api=True)
    src = registries.hosts[SRC]
    children = [image(src, "amd64", "a"), image(src, "arm64", "b")]
    index_of(src, children, "1")
    wrong = artifact(src, image(src, "elsewhere", "c"), "signature of another image")
    listed = src.referrers

    def listing(repo: str, digest: str) -> bytes | None:  # lists it under the arm64 child
        body = json.loads(listed(repo, digest) or b"{}")
        if digest == children[1].digest:
            body["manifests"].append({"mediaType": wrong.media_type, "digest": wrong.digest,
                                      "size": len(wrong.body)})
        return json.dumps(body).encode()

    src.referrers = listing  # type: ignore[method-assign]
    config = parse_config(SIGNED, "mirrors.yml", {"REGISTRY": DST})
    (outcome,) = run_mirror(config.images, head=registries.head,
                            copier=ChildCopier(registries),
                            gate=RateLimitGate(RateLimitPolicy(floor=0)), jobs=1,
                            registries=registries).outcomes
    assert outcome.status == FAILED and outcome.exit_code == 2, outcome.message
    assert f"but its subject is {children[1].digest}" not in outcome.message
    assert f"is listed as an artifact of {children[1].digest}" in outcome.message
    assert "nothing was written for this image" in outcome.message
    assert registries.hosts[DST].writes() == [] and registries.hosts[DST].manifests == {}
    assert outcome.pulls == 2  # the index, then the listed artifact (to check it)
