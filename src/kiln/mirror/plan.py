"""Deciding, from HEAD requests and tag lists alone, what each image needs: skip, retag, copy,
or an error.

Pure: the runner does the requests and hands the answers in. Docker Hub counts manifest GETs as
pulls; HEADs and tag lists are free, so everything here is decided from HEAD answers (digest,
media type, size) and tag lists. A manifest is only fetched when the destination lacks it:

- a tag set (``tags:``) becomes one image per selected tag (:func:`expand_tag_sets`);
- a digest that the destination repository already has under another tag is *retagged*: the
  destination's own manifest is written under the new tag (a PUT), no source pull;
- a changed multi-arch index fetches only the children the destination lacks
  (:func:`children_to_fetch`): the index, plus one GET per new child.

A probe result is one of: a manifest description (the tag or digest exists), ``None`` (404), or a
:class:`ProbeError` (anything else, with the message to show).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from kiln.mirror.config import MirrorConfig, MirrorImage, MirrorSet
from kiln.mirror.tagsets import Selection, newest_first
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
    RETAG = "retag"  # the digest is in the destination repository already: tag it, no pull
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
        """Upper estimate of the pulls a copy costs (0 unless copying; a retag costs none)."""
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
               source_pinned: Probe = None, destination_digest: Probe = None) -> Plan:
    """The plan for one image from its HEAD answers.

    ``source_tag`` is the HEAD of the source tag, ``destination`` the HEAD of the destination
    tag, ``source_pinned`` the HEAD of the pinned digest (only for pinned sources; pass the tag's
    answer when the tag still points at the pin). ``destination_digest`` is the HEAD of the
    wanted digest in the destination repository (see :func:`wanted_digest`): when it is there
    (under another tag), the plan is a :attr:`Action.RETAG` instead of a copy.
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
    if destination is not None and destination.digest == wanted:
        what = "pinned digest" if image.pinned else "source"
        return make(Action.SKIP, f"up to date ({what} {_short(wanted)})")
    if destination is None:
        why = "not at the destination yet"
    elif image.pinned:
        why = f"destination has {_short(destination.digest)}, the pin is {_short(wanted)}"
    else:
        why = (f"upstream moved: destination has {_short(destination.digest)}, source has "
               f"{_short(wanted)}")
    if destination_digest is not None and not isinstance(destination_digest, ProbeError) \
            and destination_digest.digest == wanted:
        return make(Action.RETAG, f"{why}; {_short(wanted)} is in the destination repository "
                    "already (another tag): tag it there, no pull")
    return make(Action.COPY, why)


def wanted_digest(image: MirrorImage, source_tag: Probe, source_pinned: Probe = None
                  ) -> str | None:
    """The digest the destination should end up with (the pin, else the source tag's), or None
    when the source answers do not give one (the plan will be an error)."""
    if image.pinned:
        found = source_pinned is not None and not isinstance(source_pinned, ProbeError)
        return image.source.digest if found else None
    if source_tag is None or isinstance(source_tag, ProbeError):
        return None
    return source_tag.digest


# -- changed indexes: fetch only the children the destination lacks -------------------------

@dataclass(frozen=True)
class IndexUpdate:
    """How to bring a changed multi-arch index to the destination at the pull floor."""

    fetch: tuple[str, ...]  # child digests to GET from the source (and copy blobs of)
    present: tuple[str, ...]  # children the destination repository has already

    @property
    def pulls(self) -> int:
        """Source manifest GETs: the index itself plus each missing child."""
        return 1 + len(self.fetch)


def children_to_fetch(children: Sequence[str], present: Mapping[str, Probe]) -> IndexUpdate:
    """Which children of a source index (digests, in index order) to fetch, from the HEADs of
    those digests in the destination repository (``present``: digest -> probe). A child whose
    HEAD failed is fetched (the copy finds out for sure)."""
    fetch: list[str] = []
    have: list[str] = []
    for digest in dict.fromkeys(children):
        answer = present.get(digest)
        if answer is not None and not isinstance(answer, ProbeError) and answer.digest == digest:
            have.append(digest)
        else:
            fetch.append(digest)
    return IndexUpdate(tuple(fetch), tuple(have))


# -- tag sets ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SetResult:
    """What one tag set came to: its selection (or why there is none) and its images."""

    tag_set: MirrorSet
    selection: Selection | None
    images: tuple[MirrorImage, ...] = ()
    error: str | None = None
    exit_code: int = 0
    warnings: tuple[str, ...] = ()
    already: tuple[str, ...] = ()  # selected tags another entry mirrors already

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass(frozen=True)
class Expansion:
    """The images to mirror, in file order (tag sets expanded in place), and each set's result."""

    images: tuple[MirrorImage, ...]
    sets: tuple[SetResult, ...] = field(default=())

    @property
    def failures(self) -> list[SetResult]:
        return [result for result in self.sets if result.failed]


Listing = Sequence[str] | ProbeError  # a repository's tag list, or why it could not be listed


def expand_tag_sets(config: MirrorConfig, listings: Mapping[int, Listing],
                    images: Iterable[MirrorImage] | None = None) -> Expansion:
    """Expand ``config.tag_sets`` with their tag lists (``listings``: index into
    ``config.tag_sets`` -> the source repository's tags). ``images`` (default: the config's
    single-tag entries) are kept; a tag that an earlier entry mirrors to the same destination
    is mirrored once; one destination tag fed from two sources is an error of the later set."""
    fixed = list(config.images if images is None else images)
    entries: list[tuple[tuple[int, int], int, MirrorImage | int]] = [
        ((i.position.line, i.position.column), n, i) for n, i in enumerate(fixed)]
    entries += [((s.position.line, s.position.column), len(fixed) + n, n)
                for n, s in enumerate(config.tag_sets)]
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    taken: dict[str, MirrorImage] = {_key(i): i for i in fixed if i.destination is not None}
    out: list[MirrorImage] = []
    results: list[SetResult] = []
    for _, _, entry in entries:
        if isinstance(entry, MirrorImage):
            out.append(entry)
            continue
        tag_set = config.tag_sets[entry]
        listing = listings.get(entry)
        if listing is None:
            results.append(SetResult(tag_set, None, error=f"{tag_set.source.name}: tags were "
                                     "not listed", exit_code=1))
            continue
        if isinstance(listing, ProbeError):
            results.append(SetResult(tag_set, None, error=f"cannot list the tags of "
                                     f"{tag_set.source.name}: {listing.message}",
                                     exit_code=listing.exit_code))
            continue
        selection = tag_set.rule.select(listing)
        mine: list[MirrorImage] = []
        already: list[str] = []
        conflicts: list[str] = []
        for tag in selection.selected:
            image = tag_set.image(tag, selection.reasons[tag])
            other = taken.get(_key(image)) if image.destination is not None else None
            if other is None:
                if image.destination is not None:
                    taken[_key(image)] = image
                mine.append(image)
            elif other.source == image.source:
                already.append(tag)
            else:
                conflicts.append(f"{image.destination} is also the destination of "
                                 f"{other.source} (line {other.position.line})")
        warnings: list[str] = []
        if not selection.selected:
            warnings.append(f"{tag_set.rule.describe()} selects none of the "
                            f"{selection.listed} tags of {tag_set.source.name}")
        if conflicts:
            results.append(SetResult(tag_set, selection, tuple(mine), "; ".join(conflicts), 2,
                                     tuple(warnings), tuple(already)))
        else:
            results.append(SetResult(tag_set, selection, tuple(mine), None, 0, tuple(warnings),
                                     tuple(already)))
        out.extend(mine)
    return Expansion(tuple(out), tuple(results))


def _key(image: MirrorImage) -> str:
    assert image.destination is not None
    return f"{image.destination.name}:{image.destination.tag}"


def describe_selection(result: SetResult, *, limit: int = 8) -> list[str]:
    """The dry run's lines for one tag set: what the rule selected and why, what it dropped
    (grouped by reason, ``limit`` names per group)."""
    tag_set = result.tag_set
    where = f"line {tag_set.position.line}"
    if result.selection is None:
        return [f"{tag_set.source.name} ({where}): {result.error}"]
    selection = result.selection
    lines = [f"{tag_set.source.name} ({where}): {selection.summary()}"]
    for tag in newest_first(selection.selected):
        lines.append(f"  + {tag}: {selection.reasons[tag]}")
    for why, tags in selection.dropped_by_reason():
        tags = newest_first(tags)
        shown = ", ".join(tags[:limit]) + (f", ... ({len(tags) - limit} more)"
                                          if len(tags) > limit else "")
        lines.append(f"  - {len(tags)} {why}: {shown}")
    if result.already:
        lines.append(f"  = mirrored by another entry already: {', '.join(result.already)}")
    lines.extend(f"  ! {warning}" for warning in result.warnings)
    if result.error:
        lines.append(f"  ERROR {result.error}")
    return lines
