"""Real images, indexes and artifacts for the prune, tags and referrers tests and the prune
benchmark, written straight into a registry through kiln's own client.

Every image is a real OCI image manifest (its own config with architecture and creation time,
one small shared layer); an index is a real OCI index over such images; an artifact is a valid
OCI 1.1 artifact manifest (``artifactType``, the empty config, one payload layer) whose
``subject`` is an image, as a signing tool would push it. No signing service is reachable here,
so the tests push these themselves.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from datetime import UTC, datetime, timedelta

from kiln.referrers import cosign_tags, fallback_tag
from kiln.registry import media
from kiln.registry.client import RegistryClient
from kiln.registry.media import Manifest

SIGNATURE = "application/vnd.dev.kiln.test.signature"
ATTESTATION = "application/vnd.dev.kiln.test.attestation"
NOW = datetime.now(UTC)


def _layer(text: str) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = text.encode()
        info = tarfile.TarInfo("seed.txt")
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": media.digest_of(data), "size": len(data)}


class Seeder:
    """Writes into one repository of a plain-HTTP registry (``host:port``)."""

    def __init__(self, host: str, repository: str = "app") -> None:
        self.client = RegistryClient(host)
        self.repository = repository
        self.layer = _layer("kiln lifecycle test layer\n")
        self.client.put_blob(repository, self.layer)
        self.client.put_blob(repository, media.EMPTY_JSON)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Seeder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def image(self, label: str, *, days_old: float = 0.0, arch: str = "amd64",
              tag: str | None = None) -> Manifest:
        created = (NOW - timedelta(days=days_old)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        config = json.dumps({"architecture": arch, "os": "linux", "created": created,
                             "config": {"Labels": {"test": label}},
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        self.client.put_blob(self.repository, config)
        body = json.dumps({
            "schemaVersion": 2, "mediaType": media.OCI_MANIFEST,
            "config": _descriptor(media.OCI_CONFIG, config),
            "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar+gzip", self.layer)],
        }).encode()
        return self.put(Manifest.from_bytes(body, media.OCI_MANIFEST), tag)

    def index(self, children: dict[str, Manifest], tag: str | None = None) -> Manifest:
        body = json.dumps({
            "schemaVersion": 2, "mediaType": media.OCI_INDEX,
            "manifests": [{**_descriptor(m.media_type, m.body),
                           "platform": {"architecture": arch, "os": "linux"}}
                          for arch, m in children.items()],
        }).encode()
        return self.put(Manifest.from_bytes(body, media.OCI_INDEX), tag)

    def artifact(self, subject: Manifest | None, payload: str, *,
                 artifact_type: str = SIGNATURE, tag: str | None = None) -> Manifest:
        """An OCI artifact manifest referring to ``subject`` (``None``: no subject at all)."""
        data = payload.encode()
        self.client.put_blob(self.repository, data)
        document: dict[str, object] = {
            "schemaVersion": 2, "mediaType": media.OCI_MANIFEST, "artifactType": artifact_type,
            "config": _descriptor(media.OCI_EMPTY, media.EMPTY_JSON),
            "layers": [_descriptor(artifact_type + ".v1+json", data)],
            "annotations": {"org.opencontainers.image.created": NOW.isoformat()},
        }
        if subject is not None:
            document["subject"] = _descriptor(subject.media_type, subject.body)
        body = json.dumps(document).encode()
        return self.put(Manifest.from_bytes(body, media.OCI_MANIFEST), tag)

    def fallback_index(self, subject: Manifest, artifacts: list[Manifest]) -> Manifest:
        """The tag-schema fallback: the referrers index under ``sha256-<hex>``."""
        body = json.dumps({
            "schemaVersion": 2, "mediaType": media.OCI_INDEX,
            "manifests": [{**_descriptor(a.media_type, a.body),
                           "artifactType": json.loads(a.body).get("artifactType", "")}
                          for a in artifacts],
        }).encode()
        return self.put(Manifest.from_bytes(body, media.OCI_INDEX), fallback_tag(subject.digest))

    def sign(self, subject: Manifest, *, cosign: bool = True) -> list[Manifest]:
        """A signature and an attestation by the referrers fallback, and cosign's .sig tag."""
        made = [self.artifact(subject, f"signature of {subject.digest}"),
                self.artifact(subject, f"attestation of {subject.digest}",
                              artifact_type=ATTESTATION)]
        self.fallback_index(subject, made)
        if cosign:
            made.append(self.artifact(subject, f"cosign signature of {subject.digest}",
                                      tag=cosign_tags(subject.digest)[0]))
        return made

    def put(self, manifest: Manifest, tag: str | None = None) -> Manifest:
        self.client.put_manifest(self.repository, tag or manifest.digest, manifest)
        return manifest

    def tag(self, tag: str, manifest: Manifest) -> None:
        self.client.put_manifest(self.repository, tag, manifest)


def tags_of(host: str, repository: str = "app") -> dict[str, str]:
    """tag -> digest, read with a fresh client."""
    with RegistryClient(host) as client:
        result = {}
        for tag in client.list_tags(repository):
            info = client.head_manifest(repository, tag)
            assert info is not None, f"{tag} is listed but has no manifest"
            result[tag] = info.digest
        return result


def exists(host: str, digest: str, repository: str = "app") -> bool:
    with RegistryClient(host) as client:
        return client.head_manifest(repository, digest) is not None


def seed_pipelines(seeder: Seeder, count: int, *, first: int = 1, step_days: float = 3.0,
                   arches: tuple[str, ...] = ()) -> dict[int, Manifest]:
    """Pipelines ``first``..: ``p-<n>`` and ``g-<n>`` (and ``p-<n>-<arch>`` under an index when
    ``arches`` is given), pipeline n created ``(last - n) * step_days`` days ago."""
    made = {}
    last = first + count - 1
    for n in range(first, last + 1):
        age = (last - n) * step_days + 0.5
        if arches:
            children = {a: seeder.image(f"{n}-{a}", days_old=age, arch=a, tag=f"p-{n}-{a}")
                        for a in arches}
            top = seeder.index(children, tag=f"p-{n}")
        else:
            top = seeder.image(str(n), days_old=age, tag=f"p-{n}")
        seeder.tag(f"g-{n}", top)
        made[n] = top
    return made
