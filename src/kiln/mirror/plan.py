"""Deciding, from HEAD requests alone, what each image needs: skip, copy, or an error.

Pure: the runner does the HEADs and hands the answers in. Docker Hub counts manifest GETs as
pulls and HEADs as free, so everything here is decided from HEAD answers (digest, media type,
size); a manifest is only ever fetched by the copy itself, and only when the destination differs.

A probe result is one of: a manifest description (the tag or digest exists), ``None`` (404), or a
:class:`ProbeError` (anything else, with the message to show).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from kiln.mirror.config import MirrorImage
from kiln.registry.media import INDEX_TYPES


class Head(Protocol):
    """What a HEAD tells us (``kiln.registry.client.ManifestInfo`` has these)."""

    @property
    def digest(self) -> str: ...

    @property
    def media_type(self) -> str: ...

    @property
    def size(self) -> int: ...


@dataclass(frozen=True)
class ProbeError:
    """A HEAD that failed for another reason than 404 (auth, network, 5xx after retries)."""

    message: str
    exit_code: int = 2


Probe = Head | ProbeError | None


class Action(Enum):
    SKIP = "skip"
    COPY = "copy"
    ERROR = "error"


@dataclass(frozen=True)
class Plan:
    """What to do with one image, and why."""

    image: MirrorImage
    action: Action
    reason: str
    digest: str | None = None  # the source digest to copy (always copy by digest)
    media_type: str | None = None
    size: int = 0
    warnings: tuple[str, ...] = ()
    exit_code: int = 0  # for ERROR: the KilnError exit code category

    @property
    def pulls(self) -> int:
        """Upper estimate of the pulls a copy costs (0 unless copying)."""
        if self.action is not Action.COPY:
            return 0
        return estimated_pulls(self.media_type or "", self.size)


# A manifest-list entry is at least ~150 bytes of compact JSON (media type, digest, size,
# platform); dividing the index size by this over-counts its children, which is the safe side.
_MIN_INDEX_ENTRY_BYTES = 150


def estimated_pulls(media_type: str, size: int) -> int:
    """Manifest GETs (Docker Hub pulls) a ``--all`` copy makes: 1 for an image, 1 + children
    for an index. HEAD does not tell how many children an index has, so this over-estimates
    from its size; the next HEAD's ``ratelimit-remaining`` corrects the budget anyway."""
    if media_type in INDEX_TYPES:
        return 1 + max(1, math.ceil(size / _MIN_INDEX_ENTRY_BYTES))
    return 1


def _short(digest: str) -> str:
    return digest[:19]


def plan_image(image: MirrorImage, source_tag: Probe, destination: Probe,
               source_pinned: Probe = None) -> Plan:
    """The plan for one image from its HEAD answers.

    ``source_tag`` is the HEAD of the source tag, ``destination`` the HEAD of the destination
    tag, ``source_pinned`` the HEAD of the pinned digest (only for pinned sources; pass the tag's
    answer when the tag still points at the pin).
    """
    src = image.source
    warnings: list[str] = []
    if image.pinned:
        pinned = src.digest
        assert pinned is not None
        if isinstance(source_tag, ProbeError):
            warnings.append(f"could not check whether {src.name}:{src.tag} still points at the "
                            f"pinned digest: {source_tag.message}")
        elif source_tag is None:
            warnings.append(f"tag {src.tag} no longer exists at {src.name}; mirroring the pinned "
                            f"digest {_short(pinned)}")
        elif source_tag.digest != pinned:
            warnings.append(f"{src.name}:{src.tag} now points at {_short(source_tag.digest)}, not "
                            f"the pinned {_short(pinned)}; mirroring the pinned digest (update "
                            "the pin to follow upstream)")
        if isinstance(source_pinned, ProbeError):
            return Plan(image, Action.ERROR, f"source: {source_pinned.message}",
                        warnings=tuple(warnings), exit_code=source_pinned.exit_code)
        if source_pinned is None:
            return Plan(image, Action.ERROR,
                        f"source no longer serves the pinned digest {pinned} "
                        f"({src.name}@{_short(pinned)} answers 404)",
                        warnings=tuple(warnings))
        head: Head = source_pinned
        wanted = pinned
    else:
        if isinstance(source_tag, ProbeError):
            return Plan(image, Action.ERROR, f"source: {source_tag.message}",
                        exit_code=source_tag.exit_code)
        if source_tag is None:
            return Plan(image, Action.ERROR,
                        f"source {src} not found (404): check the repository and tag")
        head = source_tag
        wanted = source_tag.digest

    def make(action: Action, reason: str, exit_code: int = 0) -> Plan:
        return Plan(image, action, reason, digest=wanted, media_type=head.media_type,
                    size=head.size, warnings=tuple(warnings), exit_code=exit_code)

    if isinstance(destination, ProbeError):
        return make(Action.ERROR, f"destination: {destination.message}", destination.exit_code)
    if destination is None:
        return make(Action.COPY, "not at the destination yet")
    if destination.digest == wanted:
        what = "pinned digest" if image.pinned else "source"
        return make(Action.SKIP, f"up to date ({what} {_short(wanted)})")
    if image.pinned:
        return make(Action.COPY, f"destination has {_short(destination.digest)}, the pin is "
                    f"{_short(wanted)}")
    return make(Action.COPY, f"upstream moved: destination has {_short(destination.digest)}, "
                f"source has {_short(wanted)}")
