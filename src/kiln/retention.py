"""Which tags ``prune`` removes and which digests go with them: the retention policy, pure.

A repository read once (:class:`RepositoryState`: tag -> digest, and per digest what it is) and
a :class:`Policy` go in; a :class:`PrunePlan` comes out: per tag keep or remove and why, and
the digests nothing kept needs any more. :mod:`kiln.prune` carries the plan out.

The rules (``docs/tags.md``):

* Candidates are tags kiln writes itself (``p-<id>[-<arch>]``, ``g-<id>``, ``mr-<iid>``) that
  match a ``match`` pattern. ``production``, ``latest``, any tag kiln does not write (git-tag
  tags and anything pushed by others), ``keep-tags`` patterns and the ``mr-<iid>`` of an open
  merge request are never candidates. Git-tag tags are recognised by shape, not by asking git:
  a git tag can never take a name kiln manages (:mod:`kiln.tag_policy`), so every other name is
  kept, and a scheduled job needs no clone with tags.
* Each ``match`` pattern is a series: its newest ``keep`` entries stay. A pipeline's tags
  (``p-<n>``, ``p-<n>-<arch>``, ``g-<n>``) are one entry, ranked by the pipeline number; other
  tags rank by the image's creation time (a pipeline entry ranks above any other).
* A candidate created less than ``older-than`` ago stays, as does one whose age is unknown.
* Removing a tag never removes another: the digest of a kept tag, the children of a kept index
  and the artifacts (signatures, attestations) of a kept image stay. Digests only removed tags
  led to are deleted (artifacts first, indexes last: see :func:`_delete_order`); artifact tags
  (``sha256-<hex>[.sig|.att|.sbom]``) follow their subject, input-key tags (``k-<hex>``, the
  build's reuse key) their digest.
* A plan that would leave an image without any tag is refused.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from kiln.errors import ConfigError, InputError
from kiln.referrers import artifact_tag_subject
from kiln.tag_policy import FIXED_TAGS, is_key_tag, is_pipeline_managed, mr_tag, pipeline_number

DEFAULT_MATCH = ("p-*", "g-*")
DEFAULT_KEEP = "10"
DEFAULT_OLDER_THAN = "30d"
NEVER = FIXED_TAGS

_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_IID = re.compile(r"^!?(\d{1,18})$")
POLICY_KEYS = ("match", "keep", "older-than", "keep-tags")


# -- policy ------------------------------------------------------------------------------------

def parse_age(value: Any) -> timedelta:
    """``30d``, ``12h``, ``2w``, ``90m``, ``45s`` (``0d``: no age protection)."""
    match = _AGE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not an age: a number and a unit s, m, h, d or w "
                         "(e.g. 30d)")
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def parse_keep(value: Any) -> int:
    """How many newest entries of each series to keep: a whole number, 0 or more."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit():
        raise ValueError(f"{value!r} is not a whole number (e.g. 10)")
    return int(text)


def parse_iid(value: Any) -> str:
    match = _IID.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a merge request iid (e.g. 7)")
    return match[1]


def check_pattern(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"{value!r} is not a tag pattern (e.g. 'p-*')")
    return text


@dataclass(frozen=True)
class Policy:
    """One image's retention policy; ``source`` says where each part came from."""

    match: tuple[str, ...] = DEFAULT_MATCH
    keep: int = int(DEFAULT_KEEP)
    older_than: timedelta = field(default_factory=lambda: parse_age(DEFAULT_OLDER_THAN))
    keep_tags: tuple[str, ...] = ()
    open_mrs: tuple[str, ...] = ()
    source: str = "defaults"

    def describe(self) -> str:
        age = _duration_text(self.older_than) if self.older_than else "any age"
        text = (f"match {' '.join(self.match)}; keep the newest {self.keep} of each; keep "
                f"anything younger than {age}")
        if self.keep_tags:
            text += f"; always keep {' '.join(self.keep_tags)}"
        if self.open_mrs:
            text += f"; open merge requests {' '.join('!' + i for i in self.open_mrs)}"
        return text


def table_line(text: str, table: str, key: str | None = None) -> int | None:
    """The line (1-based) of ``key`` in the TOML table ``[table]`` of ``text`` (or of the table
    header; for an inline table ``name = {...}`` the line of ``name``), for error messages."""
    parts = table.split(".")
    header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(re.escape(p) for p in parts) + r"\s*\]")
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if header.match(line):
            if key is None:
                return number
            for offset, inner in enumerate(lines[number:], number + 1):
                if inner.lstrip().startswith("["):
                    break
                if re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", inner):
                    return offset
            return number
    parent, _, last = table.rpartition(".")
    if parent:
        inline = table_line(text, parent, last)
        if inline is not None:
            return inline
    return None


def resolve_policy(
    *,
    defaults: Mapping[str, Any],
    table: Mapping[str, Any] | None = None,
    table_name: str = "",
    file_name: str = "pyproject.toml",
    file_text: str = "",
    flags: Mapping[str, Any] | None = None,
) -> Policy:
    """The policy for one image: ``defaults`` (the ``prune-*`` settings) < the image's own
    ``[tool.kiln.images.<name>.prune]`` table < ``flags`` (``None`` or empty: not given).

    A bad value in the table is a :class:`ConfigError` naming ``file:line``.
    """
    values: dict[str, Any] = {
        "match": tuple(defaults.get("match") or DEFAULT_MATCH),
        "keep": defaults.get("keep", DEFAULT_KEEP),
        "older-than": defaults.get("older-than", DEFAULT_OLDER_THAN),
        "keep-tags": tuple(defaults.get("keep-tags") or ()),
    }
    open_mrs = tuple(defaults.get("open-mrs") or ())
    sources = ["settings"]

    def where(key: str | None) -> str:
        line = table_line(file_text, table_name, key) if file_text else None
        return f"{file_name}:{line}" if line else file_name

    if table:
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where(None)}: [{table_name}] must be a table",
                              hint=f"keys: {', '.join(POLICY_KEYS)}")
        unknown = sorted(set(table) - set(POLICY_KEYS))
        if unknown:
            raise ConfigError(f"{where(unknown[0])}: [{table_name}]: unknown keys {unknown}",
                              hint=f"known keys: {', '.join(POLICY_KEYS)}")
        for key, value in table.items():
            try:
                if key in ("match", "keep-tags"):
                    if isinstance(value, str) or not isinstance(value, list | tuple):
                        raise ValueError("expected a list of tag patterns, e.g. [\"p-*\"]")
                    value = tuple(check_pattern(v) for v in value)
                elif key == "keep":
                    parse_keep(value)
                else:
                    parse_age(value)
            except ValueError as exc:
                raise ConfigError(f"{where(key)}: [{table_name}] {key}: {exc}",
                                  hint="nothing was removed") from exc
            values[key] = value
        sources.append(f"{where(None)} [{table_name}]")
    given = {k: v for k, v in (flags or {}).items() if v not in (None, (), [])}
    if given:
        sources.append("flags")
    try:
        if "match" in given:
            values["match"] = tuple(check_pattern(v) for v in given["match"])
        if "keep-tags" in given:
            values["keep-tags"] = (*values["keep-tags"],
                                   *(check_pattern(v) for v in given["keep-tags"]))
        if "open-mrs" in given:
            open_mrs = (*open_mrs, *given["open-mrs"])
        keep = parse_keep(given.get("keep", values["keep"]))
        older = parse_age(given.get("older-than", values["older-than"]))
        mrs = tuple(dict.fromkeys(parse_iid(v) for v in open_mrs))
    except ValueError as exc:
        raise InputError(f"prune policy: {exc}", hint="nothing was removed") from exc
    if not values["match"]:
        raise InputError("prune policy: no tag patterns to match",
                         hint="pass --match 'p-*' (repeatable) or set prune-match")
    return Policy(tuple(values["match"]), keep, older, tuple(values["keep-tags"]), mrs,
                  " < ".join(sources))


# -- what the registry holds (read by kiln.inventory) -------------------------------------------

@dataclass(frozen=True)
class ImageFacts:
    """One digest of the repository: what it is, how big, how old, what it refers to."""

    digest: str
    media_type: str
    created: datetime | None = None
    size: int = 0
    arches: tuple[str, ...] = ()
    children: tuple[str, ...] = ()  # an index's manifests (a referrers index's artifacts)
    subject: str | None = None  # an artifact's subject
    referrers: tuple[str, ...] = ()  # artifacts the referrers API lists for this digest
    throwaway: bool = False  # a leftover of an interrupted removal


@dataclass(frozen=True)
class RepositoryState:
    """A repository as read once: its tags and the facts of every digest reachable from them."""

    name: str
    tags: Mapping[str, str]  # tag -> digest
    images: Mapping[str, ImageFacts]  # digest -> facts
    dangling: tuple[str, ...] = ()  # listed, but no manifest (a half-done delete)

    def tags_by_digest(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for tag in sorted(self.tags):
            result.setdefault(self.tags[tag], []).append(tag)
        return result

    def closure(self, digests: Iterable[str]) -> set[str]:
        """``digests`` and everything they lead to (index children, artifacts, recursively)."""
        seen: set[str] = set()
        todo = list(digests)
        while todo:
            digest = todo.pop()
            if digest in seen:
                continue
            seen.add(digest)
            facts = self.images.get(digest)
            if facts is not None:
                todo.extend(facts.children)
                todo.extend(facts.referrers)
        return seen

    def created(self, digest: str) -> datetime | None:
        facts = self.images.get(digest)
        return facts.created if facts else None


# -- the plan ----------------------------------------------------------------------------------

Action = Literal["keep", "remove"]


@dataclass(frozen=True)
class Decision:
    """One tag's fate, as the dry run's table shows it."""

    tag: str
    digest: str
    created: datetime | None
    action: Action
    why: str

    def age(self, now: datetime) -> str:
        return _age_text(now - self.created) if self.created else "?"


@dataclass(frozen=True)
class PrunePlan:
    image: str
    policy: Policy
    decisions: tuple[Decision, ...]
    delete: tuple[str, ...]  # digests to delete, in order (artifacts first, indexes last)
    kept_digests: frozenset[str]

    @property
    def removed(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.action == "remove")

    @property
    def kept(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.action == "keep")


def _duration_text(delta: timedelta) -> str:
    """A policy's age as it would be written: the largest unit that divides it (30d, 2w)."""
    seconds = int(delta.total_seconds())
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _age_text(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return "0s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):  # days, to compare with 30d
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def is_managed(tag: str) -> bool:
    """A tag kiln writes and prune may remove: ``p-<id>[-<arch>]``, ``g-<id>``, ``mr-<iid>``."""
    return is_pipeline_managed(tag)


def _rank(tag: str, created: datetime | None) -> tuple[int, float, str]:
    number = pipeline_number(tag)
    if number is not None:
        return (1, float(number), "")
    return (0, created.timestamp() if created else float("-inf"), tag)


def _entry(tag: str) -> str:
    """The series entry a tag belongs to: its pipeline for ``p-<n>``/``g-<n>``, else itself."""
    number = pipeline_number(tag)
    return f"pipeline {number}" if number is not None else tag


def plan_prune(state: RepositoryState, policy: Policy, now: datetime,
               image: str | None = None) -> PrunePlan:
    """Decide every tag of ``state`` under ``policy`` at time ``now``; pure."""
    name = image or state.name
    why: dict[str, str] = {}
    keep: dict[str, bool] = {}
    candidates: list[str] = []
    artifacts: list[str] = []
    open_mr_tags = {mr_tag(iid) for iid in policy.open_mrs}
    for tag, digest in sorted(state.tags.items()):
        facts = state.images.get(digest)
        if facts is not None and facts.throwaway:
            keep[tag], why[tag] = False, "leftover of an interrupted removal"
        elif artifact_tag_subject(tag) or is_key_tag(tag):
            artifacts.append(tag)
        elif tag in NEVER:
            keep[tag], why[tag] = True, f"{tag} is never pruned"
        elif tag in open_mr_tags:
            keep[tag], why[tag] = True, "open merge request"
        elif any(fnmatch.fnmatchcase(tag, p) for p in policy.keep_tags):
            pattern = next(p for p in policy.keep_tags if fnmatch.fnmatchcase(tag, p))
            keep[tag], why[tag] = True, f"keep-tags {pattern}"
        elif not is_managed(tag):
            keep[tag], why[tag] = True, "not a tag kiln writes (git tag or other)"
        elif not any(fnmatch.fnmatchcase(tag, p) for p in policy.match):
            keep[tag], why[tag] = True, "matches no pattern"
        else:
            candidates.append(tag)

    newest: dict[str, str] = {}
    for pattern in policy.match:
        series: dict[str, list[str]] = {}
        for tag in candidates:
            if fnmatch.fnmatchcase(tag, pattern):
                series.setdefault(_entry(tag), []).append(tag)
        ranked = sorted(series.items(), key=lambda item: max(
            _rank(t, state.created(state.tags[t])) for t in item[1]), reverse=True)
        for position, (entry, tags) in enumerate(ranked[:policy.keep], 1):
            for tag in tags:
                newest.setdefault(tag, f"newest {policy.keep} of {pattern} (#{position}: "
                                       f"{entry})")
    for tag in candidates:
        created = state.created(state.tags[tag])
        if tag in newest:
            keep[tag], why[tag] = True, newest[tag]
        elif created is None:
            keep[tag], why[tag] = True, "creation time unknown"
        elif policy.older_than and now - created < policy.older_than:
            keep[tag], why[tag] = True, f"younger than {_duration_text(policy.older_than)}"
        else:
            age = _duration_text(policy.older_than) if policy.older_than else "any age"
            keep[tag], why[tag] = False, f"older than {age}, not among the newest {policy.keep}"

    ordinary = [t for t in state.tags if t not in artifacts and t in keep
                and not _is_throwaway(state, t)]
    if ordinary and not any(keep[t] for t in ordinary):
        raise InputError(
            f"prune policy would remove every tag of {name} ({len(ordinary)} tags): "
            f"{policy.describe()} (from {policy.source})",
            hint="keep at least one: raise --keep, lower --older-than, or protect a tag with "
                 "--keep-tag; nothing was removed")

    kept_closure = state.closure(state.tags[t] for t in keep if keep[t])
    removed_closure = state.closure(state.tags[t] for t in keep if not keep[t])
    # Artifact tags follow their subject, input-key tags (k-<hex>) their own digest: they go
    # when that digest goes.
    for tag in artifacts:
        subject = artifact_tag_subject(tag)
        what = "artifact" if subject else "input key"
        subject = subject or state.tags[tag]
        if subject in removed_closure and subject not in kept_closure:
            keep[tag], why[tag] = False, f"{what} of a removed image"
        else:
            keep[tag], why[tag] = True, (f"{what} of a kept image" if subject in kept_closure
                                         else f"{what} of an image prune does not remove")
    kept_closure = state.closure(state.tags[t] for t in keep if keep[t])
    removed_closure = state.closure(state.tags[t] for t in keep if not keep[t])
    doomed = removed_closure - kept_closure

    by_digest = state.tags_by_digest()
    decisions = []
    for tag in sorted(state.tags, key=lambda t: (_sort_key(t), t)):
        digest = state.tags[tag]
        reason = why[tag]
        if not keep[tag] and digest not in doomed:
            siblings = [t for t in by_digest.get(digest, []) if keep.get(t)]
            reason += ("; digest stays (" + (f"also {', '.join(siblings[:3])}" if siblings
                                             else "needed by a kept index or image") + ")")
        decisions.append(Decision(tag, digest, state.created(digest),
                                  "keep" if keep[tag] else "remove", reason))
    for tag in state.dangling:  # listed, pointing at nothing: clear those prune may remove
        mine = (tag not in NEVER and tag not in open_mr_tags and is_managed(tag)
                and not any(fnmatch.fnmatchcase(tag, p) for p in policy.keep_tags)
                and any(fnmatch.fnmatchcase(tag, p) for p in policy.match))
        decisions.append(Decision(
            tag, "", None, "remove" if mine else "keep",
            "points at nothing (a half-done delete)" if mine else
            "points at nothing; not a tag this policy removes"))
    return PrunePlan(name, policy, tuple(decisions), _delete_order(state, doomed),
                     frozenset(kept_closure))


def _is_throwaway(state: RepositoryState, tag: str) -> bool:
    facts = state.images.get(state.tags[tag])
    return bool(facts and facts.throwaway)


def _sort_key(tag: str) -> tuple[int, float, str]:
    number = pipeline_number(tag)
    return (0, -float(number), tag) if number is not None else (1, 0.0, tag)


def _delete_order(state: RepositoryState, digests: Iterable[str]) -> tuple[str, ...]:
    """The order that leaves a rerun everything it needs when a run is interrupted: artifacts,
    then what artifact tags point at (a fallback index, a cosign manifest), then images, then
    indexes. An interrupted run leaves at worst an index or a fallback index whose entries are
    gone (still tagged: the rerun deletes it), never a tag whose subject is gone or an image
    nothing leads to any more."""
    on_artifact_tags = {d for t, d in state.tags.items() if artifact_tag_subject(t)}

    def order(digest: str) -> tuple[int, str]:
        facts = state.images.get(digest)
        if facts is not None and facts.subject is not None:
            return (0, digest)
        if digest in on_artifact_tags:
            return (1, digest)
        if facts is not None and facts.children:
            return (3, digest)
        return (2, digest)
    return tuple(sorted(digests, key=order))


def plan_rows(plan: PrunePlan, now: datetime) -> list[dict[str, str]]:
    """The dry run's table: tag, digest, age, keep/remove, why."""
    return [{"tag": d.tag, "digest": d.digest, "age": d.age(now), "action": d.action,
             "why": d.why} for d in plan.decisions]


def removal_steps(plan: PrunePlan, state: RepositoryState) -> tuple[list[str], list[str]]:
    """How each removed tag goes: ``throwaway`` tags (their digest stays, or is shared with a
    tag removed the same way) need the throwaway manifest; the others vanish with their
    digest's deletion (every tag on that digest is removed)."""
    removed = {d.tag for d in plan.removed}
    doomed = set(plan.delete)
    by_digest = state.tags_by_digest()
    throwaway, with_digest = [], []
    for tag in sorted(removed):
        digest = state.tags.get(tag, "")  # "": dangling, re-pointed at a throwaway
        if digest and digest in doomed and all(t in removed for t in by_digest[digest]):
            with_digest.append(tag)
        else:
            throwaway.append(tag)
    return throwaway, with_digest

