"""What is where: every tag of an image's repository, grouped by digest (``invoke tags``).

The same reading feeds ``prune``'s plan (:mod:`kiln.retention` decides on it), so what
``tags`` shows is exactly what ``prune`` decides on. Reading costs one tag list, one manifest
GET per tag (the body tells the digest, so no HEAD is needed), and per distinct image its config
blob (architecture, creation time); an index's children are read by digest. Nothing is written.
Where the registry has the OCI referrers API, each digest's artifacts are asked for too (one
request finds out that a registry has none, as distribution 2.8 has not).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kiln import console
from kiln.errors import RegistryError
from kiln.referrers import artifact_tag_subject, parse_referrers_index, subject_of
from kiln.registry import media
from kiln.registry.client import RegistryClient
from kiln.registry.media import Manifest
from kiln.retention import ImageFacts, RepositoryState

_IMAGE_CONFIGS = (media.DOCKER_CONFIG, media.OCI_CONFIG)


def parse_created(value: Any) -> datetime | None:
    """An image config's ``created`` (RFC 3339) as an aware datetime; ``None`` if absent/bad."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    # nanoseconds (Go's time format): Python takes at most microseconds
    text = re.sub(r"\.(\d{6})\d+", r".\1", text)
    try:
        created = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def _arch(platform: Mapping[str, Any]) -> str:
    arch = str(platform.get("architecture") or "")
    variant = platform.get("variant")
    if not arch or arch == "unknown":
        return ""
    return f"{arch}/{variant}" if variant else arch


class Reader:
    """Reads one repository into a :class:`RepositoryState` (each digest read once)."""

    def __init__(self, client: RegistryClient, repository: str) -> None:
        self.client = client
        self.repository = repository
        self.images: dict[str, ImageFacts] = {}
        self.dangling: list[str] = []
        self._referrers_api: bool | None = None

    @property
    def name(self) -> str:
        return f"{self.client.host}/{self.repository}"

    def read(self, *, progress: Callable[[int, int], None] | None = None) -> RepositoryState:
        """The tags, each tag's manifest, each distinct digest's facts; one request at a time
        (measured: parallel reads gained nothing on a loaded 2-core host and made the request
        counts vary)."""
        tags: dict[str, str] = {}
        listed = self.client.list_tags(self.repository)
        for number, tag in enumerate(sorted(listed), 1):
            manifest = self.manifest_of_tag(tag)
            if progress is not None:
                progress(number, len(listed))
            if manifest is None:
                continue
            tags[tag] = manifest.digest
            self.facts(manifest)
        return RepositoryState(self.name, tags, dict(self.images))

    def manifest_of_tag(self, tag: str) -> Manifest | None:
        try:
            return self.client.get_manifest(self.repository, tag)
        except RegistryError:
            if self.client.head_manifest(self.repository, tag) is not None:
                raise
            # listed but gone: removed meanwhile, or left dangling by distribution's delete race
            self.dangling.append(tag)
            return None

    def facts(self, manifest: Manifest) -> ImageFacts:
        known = self.images.get(manifest.digest)
        if known is not None:
            return known
        where = f"{self.name}@{manifest.digest}"
        body = manifest.body
        facts: ImageFacts
        if manifest.is_index:
            children = media.index_children(body, where)
            child_facts = []
            for child in children:
                try:
                    child_manifest = self.client.get_manifest(self.repository, child.digest)
                except RegistryError as exc:
                    console.warn(f"{where}: child {child.digest} cannot be read ({exc.message})")
                    continue
                child_facts.append(self.facts(child_manifest))
            platforms = tuple(a for a in (_arch(c.platform or {}) for c in children) if a)
            times = [f.created for f in child_facts if f.created is not None]
            facts = ImageFacts(
                manifest.digest, manifest.media_type, max(times) if times else None,
                sum(f.size for f in child_facts) + len(body), platforms,
                tuple(c.digest for c in children), subject_of(body, where),
                self._referrers(manifest.digest))
        else:
            data = media.parse_json(body, where)
            config = data.get("config") if isinstance(data.get("config"), dict) else {}
            assert isinstance(config, dict)
            layers = [d for d in data.get("layers") or [] if isinstance(d, dict)]
            size = len(body) + int(config.get("size", 0) or 0) + sum(
                int(d.get("size", 0) or 0) for d in layers)
            created: datetime | None = None
            arches: tuple[str, ...] = ()
            if config.get("mediaType") in _IMAGE_CONFIGS and isinstance(config.get("digest"), str):
                image_config = self._config(str(config["digest"]), where)
                created = parse_created(image_config.get("created"))
                arch = _arch(image_config)
                arches = (arch,) if arch else ()
            annotations = data.get("annotations")
            if created is None and isinstance(annotations, dict):
                created = parse_created(annotations.get("org.opencontainers.image.created"))
            facts = ImageFacts(manifest.digest, manifest.media_type, created, size, arches,
                               (), subject_of(body, where), self._referrers(manifest.digest),
                               media.is_throwaway(body))
        self.images[manifest.digest] = facts
        return facts

    def _config(self, digest: str, where: str) -> dict[str, Any]:
        try:
            return media.parse_json(self.client.get_blob(self.repository, digest),
                                    f"{where} config")
        except RegistryError as exc:
            console.warn(f"{where}: config {digest} cannot be read ({exc.message})")
            return {}

    def _referrers(self, digest: str) -> tuple[str, ...]:
        """What the referrers API lists for ``digest`` (nothing where there is no API)."""
        if self._referrers_api is False:
            return ()
        body = self.client.referrers(self.repository, digest)
        self._referrers_api = body is not None
        if body is None:
            return ()
        return tuple(r.digest for r in parse_referrers_index(body, f"{self.name} referrers"))


def read_repository(client: RegistryClient, repository: str,
                    progress: Callable[[int, int], None] | None = None) -> RepositoryState:
    """Every tag of ``repository`` and the facts of every digest they lead to."""
    reader = Reader(client, repository)
    state = reader.read(progress=progress)
    for tag in reader.dangling:
        console.warn(f"{reader.name}:{tag} is listed but has no manifest (removed meanwhile, "
                     "or left pointing at nothing by a half-done delete)")
    return RepositoryState(state.name, state.tags, state.images, tuple(sorted(reader.dangling)))


# -- the table ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One digest of the repository with all its tags."""

    tags: tuple[str, ...]
    digest: str
    media_type: str
    arches: tuple[str, ...]
    created: datetime | None
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {"tags": list(self.tags), "digest": self.digest, "media_type": self.media_type,
                "architectures": list(self.arches),
                "created": self.created.isoformat() if self.created else None,
                "size": self.size}


def rows(state: RepositoryState) -> list[Row]:
    """One row per tagged digest, newest first (then by digest)."""
    result = []
    for digest, tags in state.tags_by_digest().items():
        facts = state.images.get(digest) or ImageFacts(digest, "")
        result.append(Row(tuple(tags), digest, facts.media_type, facts.arches, facts.created,
                          facts.size))
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(result, key=lambda r: (r.created or epoch, r.digest), reverse=True)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def short_digest(digest: str) -> str:
    return digest[:19]


def short_tag(tag: str) -> str:
    """An artifact tag shortened for a table (``sha256-<12 hex>...sig``); others unchanged."""
    if artifact_tag_subject(tag) is None:
        return tag
    base, _, suffix = tag.partition(".")
    return f"{base[:19]}...{suffix}"


def table(state: RepositoryState) -> list[list[str]]:
    """The ``tags`` table: header row, then one row per digest."""
    lines = [["TAGS", "DIGEST", "ARCH", "CREATED", "SIZE"]]
    for row in rows(state):
        lines.append([", ".join(short_tag(t) for t in row.tags), short_digest(row.digest),
                      ", ".join(row.arches) or "-",
                      row.created.strftime("%Y-%m-%d %H:%M") if row.created else "-",
                      human_size(row.size)])
    return lines


def format_table(lines: list[list[str]]) -> str:
    """Columns padded to their widest cell (plain text: the same in CI logs and terminals)."""
    if not lines:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
                     .rstrip() for line in lines)


def as_json(state: RepositoryState) -> str:
    return json.dumps([row.as_dict() for row in rows(state)], indent=2)
