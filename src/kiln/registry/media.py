"""Manifest media types and the few facts kiln reads out of manifests.

Pure: no I/O. A manifest is always handled as the exact bytes the registry served, because its
digest is the sha256 of those bytes; re-serialising JSON would change the digest and break every
reference pinned by digest.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kiln.errors import RegistryError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
# The OCI "empty descriptor" blob ``{}`` (image-spec 1.1): config of kiln's throwaway manifests.
EMPTY_JSON = b"{}"

IMAGE_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
MANIFEST_TYPES = (*INDEX_TYPES, *IMAGE_TYPES)
# Sent on every manifest request: without it many registries down-convert to schema 1.
ACCEPT = ", ".join(MANIFEST_TYPES)


def digest_of(data: bytes) -> str:
    """The content digest (``sha256:<hex>``) of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_index(media_type: str) -> bool:
    return media_type in INDEX_TYPES


# -- the registry's answers, as values (the client fills them; mirror and promote read them) --

@dataclass(frozen=True)
class RateLimit:
    """Docker Hub style ``ratelimit-limit`` / ``ratelimit-remaining`` (``100;w=21600``)."""

    limit: int | None
    remaining: int | None
    window_seconds: int | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RateLimit | None:
        limit = headers.get("ratelimit-limit")
        remaining = headers.get("ratelimit-remaining")
        if limit is None and remaining is None:
            return None

        def number(value: str | None) -> tuple[int | None, int | None]:
            if value is None:
                return None, None
            head, _, rest = value.partition(";")
            window = None
            match = re.search(r"w=(\d+)", rest)
            if match:
                window = int(match[1])
            try:
                return int(head.strip()), window
            except ValueError:
                return None, window

        lim, window = number(limit)
        rem, window2 = number(remaining)
        return cls(lim, rem, window or window2)


@dataclass(frozen=True)
class ManifestInfo:
    """What a HEAD tells: digest, media type, size (and the rate limit, where reported)."""

    digest: str
    media_type: str
    size: int
    ratelimit: RateLimit | None = None


@dataclass(frozen=True)
class Manifest:
    """A manifest as served: exact bytes, their media type, and their digest."""

    media_type: str
    body: bytes
    digest: str

    @classmethod
    def from_bytes(cls, body: bytes, media_type: str | None = None) -> Manifest:
        return cls(media_type or media_type_of(body, None), body, digest_of(body))

    @property
    def is_index(self) -> bool:
        return is_index(self.media_type)

    def __repr__(self) -> str:
        return f"Manifest({self.media_type!r}, {self.digest}, {len(self.body)} bytes)"


def index_type_for(child_type: str) -> str:
    """The multi-arch type matching a child's format (Docker list for v2s2, OCI index for OCI)."""
    return DOCKER_MANIFEST_LIST if child_type == DOCKER_MANIFEST else OCI_INDEX


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor (media type, digest, size, optional platform)."""

    media_type: str
    digest: str
    size: int
    platform: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                                "size": self.size}
        if self.platform:
            data["platform"] = dict(self.platform)
        return data


def parse_json(body: bytes, what: str) -> dict[str, Any]:
    """Decode a manifest or config body; a clear :class:`RegistryError` if it is not JSON."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RegistryError(f"{what} is not a JSON object")
    return data


def media_type_of(body: bytes, content_type: str | None) -> str:
    """The manifest's media type: the ``mediaType`` field, else the Content-Type header."""
    header = (content_type or "").split(";")[0].strip()
    if header in MANIFEST_TYPES:
        return header
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return header
    if isinstance(data, dict):
        field = data.get("mediaType")
        if isinstance(field, str) and field:
            return field
        if "manifests" in data:
            return OCI_INDEX
        if "config" in data:
            return OCI_MANIFEST
    return header


def _descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str):
        raise RegistryError(f"{what}: malformed descriptor {raw!r}")
    return Descriptor(
        media_type=str(raw.get("mediaType", "")),
        digest=raw["digest"],
        size=int(raw.get("size", 0)),
        platform=raw.get("platform") if isinstance(raw.get("platform"), dict) else None,
    )


def config_descriptor(body: bytes, what: str = "manifest") -> Descriptor:
    """The config descriptor of an image manifest."""
    return _descriptor(parse_json(body, what).get("config"), f"{what} config")


def layer_descriptors(body: bytes, what: str = "manifest") -> list[Descriptor]:
    layers = parse_json(body, what).get("layers") or []
    return [_descriptor(raw, f"{what} layer") for raw in layers]


def index_children(body: bytes, what: str = "index") -> list[Descriptor]:
    """The child descriptors of a manifest list / OCI index."""
    manifests = parse_json(body, what).get("manifests")
    if not isinstance(manifests, list):
        raise RegistryError(f"{what}: no 'manifests' list")
    return [_descriptor(raw, f"{what} child") for raw in manifests]


def platform_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The platform object of an index entry, taken from an image config.

    ``architecture`` and ``os`` always; ``variant`` (e.g. ``v8`` for arm64) and ``os.version`` /
    ``os.features`` when the config has them, as ``buildah manifest add`` does.
    """
    platform: dict[str, Any] = {
        "architecture": str(config.get("architecture", "")),
        "os": str(config.get("os", "")),
    }
    if config.get("variant"):
        platform["variant"] = str(config["variant"])
    if config.get("os.version"):
        platform["os.version"] = str(config["os.version"])
    if config.get("os.features"):
        platform["os.features"] = list(config["os.features"])
    return platform


def build_index(media_type: str, children: list[Descriptor]) -> bytes:
    """The bytes of a manifest list / OCI index over ``children`` (kept in the given order)."""
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [child.to_json() for child in children],
    }
    return (json.dumps(document, indent=3) + "\n").encode()


def throwaway_manifest(marker: str) -> bytes:
    """A unique, minimal OCI image manifest (config and sole layer: the empty ``{}`` blob).

    It exists only to be tagged and then deleted by digest, which removes one tag without
    touching the tags of any other manifest (see :mod:`kiln.promote`).
    """
    empty = {"mediaType": OCI_EMPTY, "digest": digest_of(EMPTY_JSON), "size": len(EMPTY_JSON)}
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": empty,
        "layers": [empty],
        "annotations": {THROWAWAY_ANNOTATION: marker},
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


THROWAWAY_ANNOTATION = "dev.kiln.throwaway"


def is_throwaway(body: bytes) -> bool:
    """Whether ``body`` is a throwaway manifest written by an interrupted ``stop-mr``."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    annotations = data.get("annotations") if isinstance(data, dict) else None
    return isinstance(annotations, dict) and THROWAWAY_ANNOTATION in annotations
