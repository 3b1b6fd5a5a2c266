"""Tag sets: which of a repository's tags a ``mirrors.yml`` rule selects, and why.

Pure: tag names in, selection and reasons out. The runner lists the repository's tags
(``GET /v2/<name>/tags/list``: not a manifest GET, so no Docker Hub pull) and hands them in; the
dry run prints the reasons. A rule (``tags:`` of an image entry) has any of these parts, applied
in this order (``tags: all`` is every tag):

- ``regex``: a pattern or a list of them; a tag is kept when one matches (Python ``re.search``,
  as ``skopeo sync`` does with Go's regexp: anchor with ``^...$`` to match the whole tag).
- ``exclude``: a pattern or a list; a tag matching any of them is dropped.
- ``semver``: an npm range (``">=16 <17"``, ``^16``, ``16.x``, ``1.2.3 - 1.4``, ``... || ...``).
  Tags that are not semver versions (``MAJOR.MINOR.PATCH[-pre][+build]``, an optional leading
  ``v``) are ignored, so ``16``, ``16.2`` and ``latest`` never match; pre-releases
  (``16.2.0-rc.1``, ``16.2.0-alpine``) only when the range names a pre-release of the same
  version, as in npm.
- ``newest: N``: the N newest of what is left: by semver order when every one of them is a
  semver version, else the last N of the tag list (registries list tags in lexical order).

Semver library: ``node-semver`` (the Python port of npm's ``semver``). It implements npm's range
grammar exactly (space means *and*, ``||``, hyphen ranges, ``^``, ``~``, x-ranges, the
pre-release rule), has no dependencies and is released regularly. ``semver`` (python-semver),
also well kept, matches one comparison at a time, so ranges such as ``">=16 <17"`` would need a
hand-written range grammar on top of it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cmp_to_key
from typing import Any

import nodesemver

_LOOSE = False  # strict semver: "16.02.0" or "=16.2.0" are not versions


class RuleError(ValueError):
    """A rule part that cannot be used: ``part`` names it (``regex``, ``exclude``, ``semver``,
    ``newest``), ``item`` the list index for pattern lists, ``offset`` the character in the
    pattern where the problem is (when known)."""

    def __init__(self, part: str, message: str, *, item: int | None = None,
                 offset: int | None = None) -> None:
        super().__init__(message)
        self.part = part
        self.message = message
        self.item = item
        self.offset = offset


def is_version(tag: str) -> bool:
    """Whether ``tag`` is a semver version (strict; ``v1.2.3`` counts, ``1.2`` does not)."""
    return nodesemver.valid(tag, _LOOSE) is not None


def _compile(part: str, patterns: Sequence[str]) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for index, pattern in enumerate(patterns):
        item = index if len(patterns) > 1 else None
        if not pattern:
            raise RuleError(part, f"{part} pattern is empty", item=item)
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            where = f" at character {exc.pos + 1}" if exc.pos is not None else ""
            raise RuleError(part, f"{part} {pattern!r} does not compile: {exc.msg}{where}",
                            item=item, offset=exc.pos) from None
    return tuple(compiled)


def parse_range(text: str) -> Any:
    """The npm range ``text`` as a ``nodesemver.Range``; :class:`RuleError` when it does not
    parse (node-semver would read an empty range as ``*``: that is an error here)."""
    if not text.strip():
        raise RuleError("semver", "semver range is empty (use '*' for every version)")
    try:
        return nodesemver.make_range(text, _LOOSE)
    except (ValueError, TypeError) as exc:
        raise RuleError("semver", f"semver range {text!r} does not parse: {exc} "
                        "(npm range syntax: '>=16 <17', '^16', '16.x', '>=1 <2 || >=3')"
                        ) from None


@dataclass(frozen=True)
class TagRule:
    """A compiled ``tags:`` rule. Build it with :meth:`build` (validates every part)."""

    regex: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    semver: str | None = None
    newest: int | None = None
    _allow: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)
    _deny: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)
    _range: Any = field(default=None, repr=False, compare=False, hash=False)

    @classmethod
    def build(cls, *, regex: Sequence[str] = (), exclude: Sequence[str] = (),
              semver: str | None = None, newest: int | None = None) -> TagRule:
        """A rule from its parts; :class:`RuleError` for the first part that cannot be used."""
        allow = _compile("regex", regex)
        deny = _compile("exclude", exclude)
        version_range = parse_range(semver) if semver is not None else None
        if newest is not None and (isinstance(newest, bool) or newest < 1):
            raise RuleError("newest", f"newest must be 1 or more, not {newest}")
        return cls(tuple(regex), tuple(exclude), semver, newest, allow, deny, version_range)

    @classmethod
    def everything(cls) -> TagRule:
        """``tags: all``: the whole repository."""
        return cls()

    @property
    def selects_all(self) -> bool:
        return not (self.regex or self.exclude or self.semver is not None or self.newest)

    def describe(self) -> str:
        """The rule in one line, as written (``semver '>=16 <17', newest 3``)."""
        if self.selects_all:
            return "all tags"
        parts = []
        if self.regex:
            parts.append("regex " + " or ".join(repr(p) for p in self.regex))
        if self.exclude:
            parts.append("exclude " + " or ".join(repr(p) for p in self.exclude))
        if self.semver is not None:
            parts.append(f"semver {self.semver!r}")
        if self.newest:
            parts.append(f"newest {self.newest}")
        return ", ".join(parts)

    def _why_not(self, tag: str) -> str | None:
        """Why the filters (all but ``newest``) drop ``tag``; None when they keep it."""
        if self._allow and not any(p.search(tag) for p in self._allow):
            return "does not match regex " + " or ".join(repr(p) for p in self.regex)
        for pattern, text in zip(self._deny, self.exclude, strict=True):
            if pattern.search(tag):
                return f"matches exclude {text!r}"
        if self._range is not None:
            if not is_version(tag):
                return "not a semver version"
            if not self._range.test(tag):
                version = nodesemver.make_semver(tag, _LOOSE)
                release = f"{version.major}.{version.minor}.{version.patch}"
                if version.prerelease and self._range.test(release):
                    return ("a pre-release: the range admits one only when it names a "
                            "pre-release of the same version")
                return f"outside the semver range {self.semver!r}"
        return None

    def admits(self, tag: str) -> bool:
        """Whether the filters keep ``tag`` (``newest`` needs the whole list, so it is not
        applied): the reference lint's "is this tag mirrored by this rule" check."""
        return self._why_not(tag) is None

    def select(self, tags: Sequence[str]) -> Selection:
        """Which of ``tags`` (a repository's tag list, in its order) the rule selects, and why
        each tag is in or out."""
        listed = list(dict.fromkeys(tags))
        dropped: dict[str, str] = {}
        kept: list[str] = []
        for tag in listed:
            why = self._why_not(tag)
            if why is None:
                kept.append(tag)
            else:
                dropped[tag] = why
        matched = _matched_by(self)
        reasons = {tag: matched for tag in kept}
        order = ""
        if self.newest is not None:
            if all(is_version(tag) for tag in kept):
                ranked = sorted(kept, key=cmp_to_key(_compare_versions), reverse=True)
                order = "semver order"
            else:
                ranked = list(reversed(kept))
                odd = next(tag for tag in kept if not is_version(tag))
                order = f"tag list order ({odd!r} is not a semver version)"
            newest = set(ranked[:self.newest])
            for rank, tag in enumerate(ranked, 1):
                if tag in newest:
                    reasons[tag] = f"{matched}; newest {self.newest} by {order} (#{rank})"
                else:
                    dropped[tag] = f"older than the newest {self.newest} by {order} (#{rank})"
            kept = [tag for tag in kept if tag in newest]
        return Selection(self, tuple(kept), {t: reasons[t] for t in kept}, dropped, len(listed),
                         order)


def _matched_by(rule: TagRule) -> str:
    parts = []
    if rule.regex:
        parts.append("matches regex")
    if rule.exclude:
        parts.append("not excluded")
    if rule.semver is not None:
        parts.append(f"in semver range {rule.semver!r}")
    return ", ".join(parts) if parts else "every tag"


def _compare_versions(a: str, b: str) -> int:
    return int(nodesemver.compare(a, b, _LOOSE))


def newest_first(tags: Sequence[str]) -> list[str]:
    """``tags`` newest first when each is a semver version, else as given (for display)."""
    if tags and all(is_version(tag) for tag in tags):
        return sorted(tags, key=cmp_to_key(_compare_versions), reverse=True)
    return list(tags)


@dataclass(frozen=True)
class Selection:
    """The tags a rule selected from one listing (in the listing's order), with reasons."""

    rule: TagRule
    selected: tuple[str, ...]
    reasons: Mapping[str, str]  # selected tag -> why it is in
    dropped: Mapping[str, str]  # every other listed tag -> why it is out
    listed: int  # distinct tags in the listing
    order: str = ""  # for ``newest``: which order ranked the tags

    def summary(self) -> str:
        """One line: ``3 of 300 tags (semver '>=16 <17', newest 3)``, plus what dropped most."""
        text = f"{len(self.selected)} of {self.listed} tag{'s' if self.listed != 1 else ''} " \
               f"({self.rule.describe()})"
        if self.order:
            text += f"; newest by {self.order}"
        return text

    def dropped_by_reason(self) -> list[tuple[str, list[str]]]:
        """Dropped tags grouped by reason (most first), for a compact dry run."""
        groups: dict[str, list[str]] = {}
        for tag, why in self.dropped.items():
            key = re.sub(r" \(#\d+\)$", "", why)
            groups.setdefault(key, []).append(tag)
        return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
