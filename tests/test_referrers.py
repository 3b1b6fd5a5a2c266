"""Which artifacts refer to an image (kiln.referrers, pure) and copying them along
(kiln.promote.copy_artifacts) through the transport-injectable client: the OCI referrers API
path, which the registry on this machine (distribution 2.8) does not have, is tested here
against an in-memory registry behind ``httpx.MockTransport``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from kiln.errors import InputError, RegistryError
from kiln.promote import Registry, copy_artifacts, find_artifacts
from kiln.referrers import (
    Referrer,
    artifact_tag_subject,
    check_subject,
    cosign_tags,
    fallback_tag,
    merged_fallback,
    parse_referrers_index,
    referrers_index,
    subject_of,
)
from kiln.registry import media
from kiln.registry.client import RegistryClient
from kiln.registry.media import Manifest

SUBJECT = "sha256:" + "ab" * 32
SIG = "application/vnd.dev.kiln.test.signature"


# -- pure ----------------------------------------------------------------------------------------

def test_tag_names() -> None:
    assert fallback_tag(SUBJECT) == "sha256-" + "ab" * 32
    assert cosign_tags(SUBJECT) == tuple("sha256-" + "ab" * 32 + s for s in (".sig", ".att",
                                                                            ".sbom"))
    assert artifact_tag_subject(cosign_tags(SUBJECT)[2]) == SUBJECT
    assert artifact_tag_subject(fallback_tag(SUBJECT)) == SUBJECT
    assert artifact_tag_subject("sha256-abc") is None and artifact_tag_subject("p-1") is None
    with pytest.raises(InputError, match="not a sha256 digest"):
        fallback_tag("sha512:" + "a" * 128)


def artifact_body(subject: str | None, payload: str = "sig") -> bytes:
    document: dict[str, object] = {
        "schemaVersion": 2, "mediaType": media.OCI_MANIFEST, "artifactType": SIG,
        "config": {"mediaType": media.OCI_EMPTY, "digest": media.digest_of(b"{}"), "size": 2},
        "layers": [{"mediaType": SIG, "digest": media.digest_of(payload.encode()),
                    "size": len(payload)}]}
    if subject:
        document["subject"] = {"mediaType": media.OCI_MANIFEST, "digest": subject, "size": 10}
    return json.dumps(document).encode()


def test_subject_checks() -> None:
    assert subject_of(artifact_body(SUBJECT)) == SUBJECT
    assert subject_of(artifact_body(None)) is None
    check_subject(artifact_body(SUBJECT), SUBJECT, "reg/app@x")
    with pytest.raises(InputError, match="reg/app@x is listed as an artifact of .* no 'subject'"):
        check_subject(artifact_body(None), SUBJECT, "reg/app@x")
    with pytest.raises(InputError, match="its subject is sha256:cd"):
        check_subject(artifact_body("sha256:" + "cd" * 32), SUBJECT, "reg/app@x")
    with pytest.raises(RegistryError, match="malformed 'subject'"):
        subject_of(b'{"subject": "x"}')


def test_referrers_index_round_trip_keeps_unknown_members() -> None:
    raw = {"mediaType": media.OCI_MANIFEST, "digest": "sha256:" + "1" * 64, "size": 5,
           "artifactType": SIG, "annotations": {"a": "b"}}
    entries = parse_referrers_index(json.dumps({"manifests": [raw]}).encode(), "x")
    assert entries[0].artifact_type == SIG
    again = json.loads(referrers_index(entries))
    assert again["manifests"] == [raw] and again["mediaType"] == media.OCI_INDEX
    assert parse_referrers_index(b'{"schemaVersion": 2}', "x") == []
    with pytest.raises(RegistryError, match="not valid JSON"):
        parse_referrers_index(b"<html>", "x")


def test_merged_fallback() -> None:
    one = Referrer("sha256:" + "1" * 64, media.OCI_MANIFEST, 5, SIG)
    two = Referrer("sha256:" + "2" * 64, media.OCI_MANIFEST, 6, SIG)
    source = referrers_index([one])
    assert merged_fallback(None, source, [one]) == source  # byte for byte: same digest
    assert merged_fallback(source, None, [one]) is None  # already there
    merged = merged_fallback(source, None, [two])
    assert merged is not None
    assert [r.digest for r in parse_referrers_index(merged, "x")] == [one.digest, two.digest]
    assert merged_fallback(None, None, []) is None


# -- an in-memory registry -----------------------------------------------------------------------

@dataclass
class MemoryRegistry:
    """Enough of the distribution API for manifests, small blobs and the referrers API."""

    referrers_api: bool
    manifests: dict[str, bytes] = field(default_factory=dict)  # digest -> body
    types: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append(f"{request.method} {path}")
        match = re.match(r"^/v2/app/(manifests|blobs|referrers)/(.+)$", path)
        if path.startswith("/v2/app/blobs/uploads"):
            if request.method == "POST":
                return httpx.Response(202, headers={"Location": "/v2/app/blobs/uploads/u1"})
            digest = request.url.params["digest"]
            self.blobs[digest] = request.content
            return httpx.Response(201)
        if not match:
            return httpx.Response(404)
        kind, ref = match.groups()
        if kind == "referrers":
            if not self.referrers_api:
                return httpx.Response(404)
            found = [{"mediaType": self.types[d], "digest": d, "size": len(b), "artifactType": SIG}
                     for d, b in self.manifests.items() if subject_of(b) == ref]
            return httpx.Response(200, json={"schemaVersion": 2, "mediaType": media.OCI_INDEX,
                                             "manifests": found})
        if kind == "blobs":
            if ref not in self.blobs:
                return httpx.Response(404)
            return httpx.Response(200, content=self.blobs[ref] if request.method == "GET" else b"")
        digest = ref if ref.startswith("sha256:") else self.tags.get(ref)
        if request.method == "PUT":
            digest = media.digest_of(request.content)
            self.manifests[digest] = request.content
            self.types[digest] = request.headers["Content-Type"]
            if not ref.startswith("sha256:"):
                self.tags[ref] = digest
            return httpx.Response(201, headers={"Docker-Content-Digest": digest})
        if digest is None or digest not in self.manifests:
            return httpx.Response(404)
        body = self.manifests[digest]
        headers = {"Docker-Content-Digest": digest, "Content-Type": self.types[digest],
                   "Content-Length": str(len(body))}
        return httpx.Response(200, content=body if request.method == "GET" else b"",
                              headers=headers)

    def registry(self, host: str) -> Registry:
        client = RegistryClient(host, scheme="http", max_attempts=1,
                                transport=httpx.MockTransport(self.handler))
        return Registry(client, "app")

    def push(self, body: bytes, tag: str | None = None) -> Manifest:
        manifest = Manifest.from_bytes(body, media.OCI_MANIFEST)
        self.manifests[manifest.digest] = body
        self.types[manifest.digest] = manifest.media_type
        if tag:
            self.tags[tag] = manifest.digest
        return manifest


def signed_source(api: bool) -> tuple[MemoryRegistry, Manifest, list[Manifest]]:
    source = MemoryRegistry(referrers_api=api)
    source.blobs[media.digest_of(b"{}")] = b"{}"
    image = source.push(json.dumps({"schemaVersion": 2, "mediaType": media.OCI_MANIFEST,
                                    "config": {"mediaType": media.OCI_EMPTY,
                                               "digest": media.digest_of(b"{}"), "size": 2},
                                    "layers": []}).encode(), "p-1")
    artifacts = []
    for payload in ("signature", "attestation"):
        source.blobs[media.digest_of(payload.encode())] = payload.encode()
        artifacts.append(source.push(artifact_body(image.digest, payload)))
    if not api:
        entries = [Referrer(a.digest, a.media_type, len(a.body), SIG) for a in artifacts]
        index = Manifest.from_bytes(referrers_index(entries), media.OCI_INDEX)
        source.manifests[index.digest] = index.body
        source.types[index.digest] = media.OCI_INDEX
        source.tags[fallback_tag(image.digest)] = index.digest
    source.blobs[media.digest_of(b"cosign")] = b"cosign"
    source.push(artifact_body(image.digest, "cosign"), cosign_tags(image.digest)[0])
    return source, image, artifacts


def test_client_referrers_api_and_its_absence() -> None:
    with_api, image, artifacts = signed_source(api=True)
    reg = with_api.registry("src.example")
    body = reg.client.referrers("app", image.digest)
    assert body is not None
    assert {r.digest for r in parse_referrers_index(body, "x")} >= {a.digest for a in artifacts}
    without, image2, _ = signed_source(api=False)
    assert without.registry("src.example").client.referrers("app", image2.digest) is None


@pytest.mark.parametrize(("source_api", "destination_api"),
                         [(True, False), (False, False), (False, True), (True, True)])
def test_copy_artifacts(source_api: bool, destination_api: bool) -> None:
    source, image, artifacts = signed_source(api=source_api)
    destination = MemoryRegistry(referrers_api=destination_api)
    destination.manifests[image.digest] = image.body  # the image itself was copied already
    destination.types[image.digest] = image.media_type
    results = copy_artifacts(source.registry("src.example"),
                             destination.registry("dst.example"), image)
    for artifact in artifacts:
        assert destination.manifests[artifact.digest] == artifact.body  # same bytes, digest
    sig_tag = cosign_tags(image.digest)[0]
    assert destination.manifests[destination.tags[sig_tag]] == \
        source.manifests[source.tags[sig_tag]]
    assert set(source.blobs) <= set(destination.blobs)
    fallback = fallback_tag(image.digest)
    if destination_api:
        assert fallback not in destination.tags  # the registry indexes subjects itself
    else:
        index = destination.manifests[destination.tags[fallback]]
        assert {r.digest for r in parse_referrers_index(index, "x")} >= \
            {a.digest for a in artifacts}
        if not source_api:  # the source's own fallback index, byte for byte
            assert destination.tags[fallback] == source.tags[fallback]
    assert {r.status for r in results} == {"copied"}
    # a rerun writes the same bytes again (idempotent), and the fallback index is not rewritten
    before = dict(destination.manifests)
    copy_artifacts(source.registry("src.example"), destination.registry("dst.example"), image)
    assert destination.manifests == before


def test_an_artifact_without_its_subject_is_refused_before_anything_is_copied() -> None:
    source, image, _ = signed_source(api=True)
    stray = source.push(artifact_body(None, "stray"))
    # a broken registry (or a hand-made fallback index) lists an artifact that refers to nothing
    source.referrers_api = False
    entries = [Referrer(stray.digest, stray.media_type, len(stray.body), SIG)]
    index = Manifest.from_bytes(referrers_index(entries), media.OCI_INDEX)
    source.manifests[index.digest] = index.body
    source.types[index.digest] = media.OCI_INDEX
    source.tags[fallback_tag(image.digest)] = index.digest
    destination = MemoryRegistry(referrers_api=False)
    with pytest.raises(InputError, match="has no 'subject'") as err:
        copy_artifacts(source.registry("src.example"), destination.registry("dst.example"),
                       image)
    assert "nothing was copied" in str(err.value)
    assert not [r for r in destination.requests if not r.startswith(("GET", "HEAD"))]


def test_find_artifacts_on_a_registry_without_any() -> None:
    empty = MemoryRegistry(referrers_api=False)
    found = find_artifacts(empty.registry("x.example"), SUBJECT)
    assert not found
    assert empty.requests == [f"GET /v2/app/referrers/{SUBJECT}",
                              f"HEAD /v2/app/manifests/{fallback_tag(SUBJECT)}",
                              *(f"HEAD /v2/app/manifests/{t}" for t in cosign_tags(SUBJECT))]


def test_registry_pair_for_the_mirror() -> None:
    """What mirror does: gather before its image copy, write the artifacts after it."""
    from kiln.promote import Destination, gather_artifacts, registry_pair
    from kiln.settings import Settings

    source, image, artifacts = signed_source(api=False)
    destination = MemoryRegistry(referrers_api=False)
    destination.manifests[image.digest] = image.body
    destination.types[image.digest] = image.media_type
    backends = {"src.example": source, "dst.example": destination}

    def factory(host: str) -> RegistryClient:
        return RegistryClient(host, scheme="http", max_attempts=1,
                              transport=httpx.MockTransport(backends[host].handler))

    settings = Settings.resolve(Path("/nonexistent"))
    with registry_pair(settings, Destination("src.example", "app"),
                       Destination("dst.example", "app"), client_factory=factory) as (src, dst):
        subject = src.get(image.digest)
        found = gather_artifacts(src, subject)
        copy_artifacts(src, dst, subject, found)
    assert all(destination.manifests[a.digest] == a.body for a in artifacts)
