"""Which artifacts refer to an image (signatures, attestations, SBOMs), as pure functions.

An image's signatures and attestations are separate manifests in the same repository. A copy
of the image that leaves them behind arrives unsigned, so promote and mirror copy them along
(``docs/registry-operations.md``). There are three ways a registry tells which artifacts refer
to a digest, and kiln reads all three:

* the OCI referrers API, ``GET /v2/<repo>/referrers/<digest>``: an OCI index whose entries are
  the artifact manifests whose ``subject`` is the digest. A registry without the API answers
  404 (distribution 2.8, Debian's ``docker-registry``, is one);
* the tag-schema fallback of the OCI distribution spec: the same index stored under the tag
  ``sha256-<hex>`` (what clients write when the registry has no API);
* cosign's tags ``sha256-<hex>.sig``, ``.att`` and ``.sbom``: a manifest per kind.

Nothing here sends a request: the registry's answers come in as bytes, the decisions go out as
values, so every case is unit-tested with plain data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiln.errors import InputError, RegistryError
from kiln.registry.media import OCI_INDEX as OCI_INDEX  # the one home of media types
from kiln.registry.media import parse_json

COSIGN_SUFFIXES = (".sig", ".att", ".sbom")
_SHA256 = re.compile(r"^sha256:([0-9a-f]{64})$")
_ARTIFACT_TAG = re.compile(r"^sha256-([0-9a-f]{64})(\.sig|\.att|\.sbom)?$")


def _hex(digest: str) -> str:
    match = _SHA256.match(digest)
    if not match:
        raise InputError(f"not a sha256 digest: {digest!r}",
                         hint="artifacts are looked up by the sha256 digest of their subject")
    return match[1]


def fallback_tag(digest: str) -> str:
    """The referrers tag-schema fallback tag of ``digest``: ``sha256-<hex>``."""
    return f"sha256-{_hex(digest)}"


def cosign_tags(digest: str) -> tuple[str, ...]:
    """cosign's tags for ``digest``: ``sha256-<hex>.sig``, ``.att``, ``.sbom``."""
    base = fallback_tag(digest)
    return tuple(base + suffix for suffix in COSIGN_SUFFIXES)


def artifact_tag_subject(tag: str) -> str | None:
    """The subject digest an artifact tag (fallback or cosign) belongs to, else ``None``."""
    match = _ARTIFACT_TAG.match(tag)
    return f"sha256:{match[1]}" if match else None


def is_artifact_tag(tag: str) -> bool:
    return artifact_tag_subject(tag) is not None


@dataclass(frozen=True)
class Referrer:
    """One entry of a referrers index: an artifact manifest that refers to a subject."""

    digest: str
    media_type: str
    size: int
    artifact_type: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        """The descriptor as the registry served it (unknown members kept)."""
        data = dict(self.raw) if self.raw else {}
        data.setdefault("mediaType", self.media_type)
        data.setdefault("digest", self.digest)
        data.setdefault("size", self.size)
        if self.artifact_type:
            data.setdefault("artifactType", self.artifact_type)
        return data


def parse_referrers_index(body: bytes, what: str) -> list[Referrer]:
    """The entries of a referrers index (the API's answer or a fallback tag's manifest)."""
    data = parse_json(body, what)
    manifests = data.get("manifests")
    if manifests is None:
        manifests = []
    if not isinstance(manifests, list):
        raise RegistryError(f"{what}: 'manifests' is not a list")
    result: list[Referrer] = []
    for raw in manifests:
        if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str):
            raise RegistryError(f"{what}: malformed entry {raw!r}")
        size = raw.get("size", 0)
        result.append(Referrer(
            digest=raw["digest"], media_type=str(raw.get("mediaType", "")),
            size=int(size) if isinstance(size, int) else 0,
            artifact_type=str(raw.get("artifactType", "") or ""), raw=raw))
    return result


def subject_of(body: bytes, what: str = "manifest") -> str | None:
    """The digest in a manifest's ``subject`` descriptor, ``None`` when it has none."""
    subject = parse_json(body, what).get("subject")
    if subject is None:
        return None
    if not isinstance(subject, dict) or not isinstance(subject.get("digest"), str):
        raise RegistryError(f"{what}: malformed 'subject' {subject!r}")
    return str(subject["digest"])


def artifact_type_of(body: bytes, what: str = "manifest") -> str:
    """An artifact manifest's type: ``artifactType``, else its config's media type."""
    data = parse_json(body, what)
    kind = data.get("artifactType")
    if isinstance(kind, str) and kind:
        return kind
    config = data.get("config")
    if isinstance(config, dict) and isinstance(config.get("mediaType"), str):
        return str(config["mediaType"])
    return ""


def check_subject(body: bytes, subject: str, what: str) -> None:
    """An artifact listed as a referrer of ``subject`` must say so in its ``subject`` field;
    otherwise copying it would attach something to an image it does not belong to."""
    found = subject_of(body, what)
    if found is None:
        raise InputError(
            f"{what} is listed as an artifact of {subject} but has no 'subject'",
            hint="the referrers index (or the sha256-<hex> fallback tag) names a manifest that "
                 "does not refer to this image; remove the entry or re-push the artifact with "
                 "its subject (nothing was copied)")
    if found != subject:
        raise InputError(
            f"{what} is listed as an artifact of {subject} but its subject is {found}",
            hint="the referrers index is inconsistent; re-push the artifact (nothing was copied)")


def referrers_index(entries: Iterable[Referrer]) -> bytes:
    """The bytes of a tag-schema fallback index over ``entries`` (deduplicated by digest, in
    the given order)."""
    seen: set[str] = set()
    manifests = []
    for entry in entries:
        if entry.digest in seen:
            continue
        seen.add(entry.digest)
        manifests.append(entry.to_json())
    document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    return json.dumps(document, separators=(",", ":")).encode()


def merged_fallback(existing: bytes | None, source: bytes | None,
                    entries: Sequence[Referrer]) -> bytes | None:
    """What the destination's fallback tag should hold after a copy; ``None``: leave it.

    ``existing`` is the destination's current fallback index, ``source`` the source's (when
    the source has no API), ``entries`` every referrer copied. When the destination has no
    index yet and the source's lists exactly the copied entries, the source's bytes are
    reused (same digest on both sides). Entries already at the destination are kept first.
    """
    if not entries:
        return None
    if existing is None:
        if source is not None and {r.digest for r in parse_referrers_index(source, "index")} \
                == {r.digest for r in entries}:
            return source
        return referrers_index(entries)
    present = parse_referrers_index(existing, "destination referrers index")
    known = {r.digest for r in present}
    if all(r.digest in known for r in entries):
        return None
    return referrers_index([*present, *entries])
