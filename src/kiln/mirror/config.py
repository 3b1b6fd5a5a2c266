r"""``mirrors.yml``: which upstream images to mirror, and where to.

Schema (every key except ``images`` is optional; unknown keys are errors, reported with
``file:line:column`` like every other mistake in the file)::

    # Default destination prefix. Each source lands at <prefix>/<source repository>:<tag>, so
    # docker.io/library/debian:bookworm -> ${REGISTRY}/mirror/library/debian:bookworm, which is
    # what build files reach as ${UPSTREAM_REGISTRY}/library/debian:bookworm.
    destination: ${REGISTRY}/mirror          # default: ${REGISTRY}/mirror
    # Registries that build files and CI YAML may use directly (reference lint). Docker Hub can
    # never be approved: its pulls are rate limited, which is why we mirror.
    approved-registries: [quay.io, registry.gitlab.com]
    jobs: 4                # images copied in parallel (``--jobs`` overrides), 1..32
    retries: 3             # skopeo --retry-times for a copy (skopeo backs off between tries)
    signatures: false      # copy each image's signatures and attestations too (default: off,
                           # see below); an entry's own ``signatures:`` overrides it
    ratelimit:
      floor: 10            # never start a copy that would take ratelimit-remaining below this
      max-wait: 0          # seconds to wait (re-checking with free HEADs) before giving up
      poll-interval: 60    # seconds between those re-checks
    images:
      - postgres:alpine                              # shorthand for {source: ...}
      - source: docker.io/library/debian:bookworm@sha256:<64 hex>   # pinned digest
      - source: library/busybox:latest
        destination: registry.example.com/x/busybox:stable            # explicit destination
      - source: node                                 # a tag set: a repository and a rule
        tags:
          semver: ">=16 <17"     # npm range; tags that are not semver versions are ignored
          regex: '^16\.'         # and/or: a pattern (or list) a tag must match (re.search)
          exclude: '-rc'         # a pattern (or list) that drops a tag
          newest: 3              # keep the 3 newest (semver order, else the tag list's order)
      - source: quay.io/prometheus/busybox
        tags: all                # the whole repository
        signatures: true         # and the artifacts that refer to each image

Sources follow Docker's reference rules (``postgres:alpine`` is
``docker.io/library/postgres:alpine``; no tag means ``latest``); a pinned source also needs its
tag, which is what the destination gets tagged with. A source with ``tags:`` names a repository
(no tag, no digest); its explicit destination, if any, is a repository too, and every selected tag
keeps its name there. What a rule selects is decided at run time from the source's tag list
(:mod:`kiln.mirror.tagsets`), which costs no pull. ``${NAME}`` and ``${NAME:-default}`` expand
from the given variables: ``REGISTRY`` (kiln's destination registry setting) and the
environment (``CI_REGISTRY_IMAGE``, ...).

``signatures: true`` (top level, or per entry) mirrors, after each image, the artifacts that
refer to it and to an index's children: OCI referrers (the referrers API, or its ``sha256-<hex>``
fallback tag) and cosign's ``sha256-<hex>.sig``/``.att``/``.sbom`` tags (:mod:`kiln.referrers`).
Off by default: finding them costs, per digest, HEADs and one referrers request even when
nothing is signed, and every artifact copied is a manifest GET, which Docker Hub counts as a
pull (``docs/registry-operations.md``); turn it on for the sources that sign their images.

Parsing is pure (text in, :class:`MirrorConfig` out); positions come from PyYAML's node marks
(``yaml.compose``), so a mistake is reported where it is, not just what it is.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from kiln.errors import ConfigError, InputError
from kiln.mirror.tagsets import RuleError, TagRule
from kiln.registry.reference import (
    ImageRef,
    is_docker_hub,
    normalize,
    parse_reference,
    split_repository,
    validate_repository,
)

__all__ = ["MirrorConfig", "MirrorImage", "MirrorSet", "Position",
           "RateLimitPolicy", "config_path", "expand", "load_config", "parse_config"]

DEFAULT_CONFIG = "mirrors.yml"
DEFAULT_DESTINATION = "${REGISTRY}/mirror"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_TOP_KEYS = ("destination", "approved-registries", "jobs", "retries", "ratelimit", "signatures",
             "images")
_IMAGE_KEYS = ("source", "destination", "tags", "signatures")
# Mirroring signatures is off unless asked for: discovering them costs requests for every image
# on every run, and each artifact copied is a pull (docs/registry-operations.md).
DEFAULT_SIGNATURES = False
_RULE_KEYS = ("regex", "exclude", "semver", "newest")
_RATELIMIT_KEYS = ("floor", "max-wait", "poll-interval")


@dataclass(frozen=True)
class Position:
    """Where something is in the config file (1-based line and column)."""

    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


@dataclass(frozen=True)
class RateLimitPolicy:
    """How close to the source's pull limit kiln may go, and how long it may wait."""

    floor: int = 10
    max_wait: float = 0.0
    poll_interval: float = 60.0


@dataclass(frozen=True)
class MirrorImage:
    """One upstream image and where it goes."""

    source: ImageRef  # always has a tag; ``digest`` set when pinned
    destination: ImageRef | None  # None when a variable in it is unset (lint mode)
    position: Position
    source_text: str
    destination_text: str  # as written (or derived from the default prefix), unexpanded
    explicit_destination: bool
    selected_by: str = ""  # for a tag of a tag set: why the rule selected it
    signatures: bool = DEFAULT_SIGNATURES  # mirror the artifacts that refer to the image too

    @property
    def tag(self) -> str:
        assert self.source.tag is not None
        return self.source.tag

    @property
    def pinned(self) -> bool:
        return self.source.digest is not None

    @property
    def label(self) -> str:
        """Short name for progress lines and summaries."""
        return str(self.source)


@dataclass(frozen=True)
class MirrorSet:
    """A source repository and the rule that picks its tags (``tags:``); each selected tag
    becomes a :class:`MirrorImage` once the runner has listed the repository's tags."""

    source: ImageRef  # repository only: no tag, no digest
    destination: ImageRef | None  # repository only; None when a variable in it is unset (lint)
    rule: TagRule
    position: Position
    source_text: str
    destination_text: str  # repository as written (or derived from the prefix), unexpanded
    explicit_destination: bool
    signatures: bool = DEFAULT_SIGNATURES

    @property
    def label(self) -> str:
        return f"{self.source.name} ({self.rule.describe()})"

    def image(self, tag: str, selected_by: str = "") -> MirrorImage:
        """The image this set mirrors for one of its tags."""
        source = ImageRef(self.source.host, self.source.repository, tag, None)
        destination = None
        if self.destination is not None:
            destination = ImageRef(self.destination.host, self.destination.repository, tag, None)
        return MirrorImage(source, destination, self.position, f"{self.source_text}:{tag}",
                           f"{self.destination_text}:{tag}", self.explicit_destination,
                           selected_by, self.signatures)


@dataclass(frozen=True)
class MirrorConfig:
    path: str
    images: tuple[MirrorImage, ...]  # the entries with one tag (or a pinned digest)
    destination_prefix: str  # unexpanded template
    approved_registries: tuple[str, ...] = ()
    jobs: int = 4
    retries: int = 3
    ratelimit: RateLimitPolicy = RateLimitPolicy()
    tag_sets: tuple[MirrorSet, ...] = ()  # the entries with ``tags:``
    signatures: bool = DEFAULT_SIGNATURES  # the top-level default of the entries

    def mirrored(self, ref: ImageRef) -> MirrorImage | None:
        """The config entry that mirrors ``ref`` (same repository and tag), if any. For a tag
        set, "mirrors" means its filters keep the tag (``newest`` needs the live tag list)."""
        ref = normalize(ref)
        tag = ref.tag or (None if ref.digest else "latest")
        for image in self.images:
            if image.source.host != ref.host or image.source.repository != ref.repository:
                continue
            if tag is not None and image.tag == tag:
                return image
            if tag is None and ref.digest == image.source.digest:
                return image
        if tag is None:
            return None
        for tag_set in self.tag_sets:
            if (tag_set.source.host, tag_set.source.repository) == (ref.host, ref.repository) \
                    and tag_set.rule.admits(tag):
                return tag_set.image(tag, tag_set.rule.describe())
        return None


class _Errors:
    """Collects every mistake so the user fixes the file in one go."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.found: list[tuple[int, int, str]] = []

    def at(self, node: yaml.Node, message: str, column: int | None = None) -> None:
        """Record ``message`` at ``node`` (or at ``column`` of its line, when known better)."""
        pos = self.pos(node)
        if column is not None:
            pos = Position(pos.path, pos.line, column)
        self.found.append((pos.line, pos.column, f"{pos}: {message}"))

    @property
    def items(self) -> list[str]:
        return [text for _, _, text in sorted(self.found)]

    def pos(self, node: yaml.Node) -> Position:
        mark = node.start_mark
        return Position(self.path, mark.line + 1, mark.column + 1)


def expand(text: str, variables: Mapping[str, str]) -> tuple[str, list[str]]:
    """``text`` with ``${NAME}``/``${NAME:-default}`` expanded; also the names left unset."""
    missing: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name, default = match[1], match[2]
        value = variables.get(name)
        if value:
            return value
        if default is not None:
            return default
        missing.append(name)
        return match[0]

    return _VAR.sub(replace, text), missing


def parse_config(text: str, path: str | Path, variables: Mapping[str, str], *,
                 require_destination: bool = True) -> MirrorConfig:
    """Validate a mirrors file. ``require_destination=False`` (the lint) tolerates unset
    variables in destinations; the mirror itself needs them."""
    where = str(path)
    errors = _Errors(where)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark else where
        opened = ""
        if exc.context and exc.context_mark is not None and exc.context_mark != mark:
            opened = (f" ({exc.context} at line {exc.context_mark.line + 1}, column "
                      f"{exc.context_mark.column + 1})")
        raise ConfigError(f"{loc}: not valid YAML: {exc.problem or exc}{opened}") from None
    if root is None:
        raise ConfigError(f"{where}: empty mirror configuration",
                          hint="list the upstream images under 'images:'")
    if not isinstance(root, yaml.MappingNode):
        errors.at(root, "the top level must be a mapping with an 'images:' list")
        _raise(errors)
    assert isinstance(root, yaml.MappingNode)
    top = _mapping(root, _TOP_KEYS, errors, "top level")

    prefix = DEFAULT_DESTINATION
    if "destination" in top:
        prefix = _string(top["destination"], errors, "destination") or DEFAULT_DESTINATION
    approved: list[str] = []
    if "approved-registries" in top:
        node = top["approved-registries"]
        if not isinstance(node, yaml.SequenceNode):
            errors.at(node, "approved-registries must be a list of registry hosts")
        else:
            for item in node.value:
                host = _string(item, errors, "approved registry")
                if host is None:
                    continue
                host = host.strip().rstrip("/")
                if is_docker_hub(host):
                    errors.at(item, f"{host} cannot be approved: Docker Hub's pulls are rate "
                              "limited, which is what the mirror is for")
                elif not re.match(r"^[A-Za-z0-9.\-\[\]:]+(/[a-z0-9._/-]+)?$", host):
                    errors.at(item, f"invalid registry host {host!r}")
                else:
                    approved.append(host)
    jobs = _int(top.get("jobs"), errors, "jobs", 1, 32, 4)
    retries = _int(top.get("retries"), errors, "retries", 0, 10, 3)
    signatures = _bool(top.get("signatures"), errors, "signatures", DEFAULT_SIGNATURES)
    policy = RateLimitPolicy()
    if "ratelimit" in top:
        node = top["ratelimit"]
        if not isinstance(node, yaml.MappingNode):
            errors.at(node, "ratelimit must be a mapping (floor, max-wait, poll-interval)")
        else:
            rl = _mapping(node, _RATELIMIT_KEYS, errors, "ratelimit")
            policy = RateLimitPolicy(
                floor=_int(rl.get("floor"), errors, "ratelimit.floor", 0, 100000, 10),
                max_wait=_number(rl.get("max-wait"), errors, "ratelimit.max-wait", 0.0, 0.0),
                poll_interval=_number(rl.get("poll-interval"), errors,
                                      "ratelimit.poll-interval", 0.001, 60.0),
            )

    prefix_ref: tuple[str, str] | None = None
    prefix_missing: list[str] = []
    expanded_prefix, prefix_missing = expand(prefix, variables)
    prefix_node = top.get("destination", root)
    if not prefix_missing:
        try:
            host, base = split_repository(expanded_prefix)
            if base:
                validate_repository(base)
            prefix_ref = (host, base)
        except InputError as exc:
            errors.at(prefix_node, f"invalid destination prefix {expanded_prefix!r}: {exc.message}")

    images: list[MirrorImage] = []
    tag_sets: list[MirrorSet] = []
    if "images" not in top:
        errors.at(root, "missing 'images:' (the list of upstream images to mirror)")
    elif not isinstance(top["images"], yaml.SequenceNode) or not top["images"].value:
        errors.at(top["images"], "images must be a non-empty list")
    else:
        seen: dict[str, Position] = {}
        # destination repository -> (source repository, entry position): a repository fed by
        # two sources through a tag set could get one tag from both
        feeds: dict[str, tuple[str, Position, bool]] = {}
        for item in top["images"].value:
            entry = _entry(item, errors, variables, prefix, prefix_ref, prefix_missing,
                           require_destination)
            if entry is None:
                continue
            fields = _entry_fields(item)
            entry = dataclasses.replace(entry, signatures=_bool(
                fields.get("signatures"), errors, "signatures", signatures))
            if entry.destination is not None:
                is_set = isinstance(entry, MirrorSet)
                repo = entry.destination.name
                fed = feeds.get(repo)
                if fed is not None and fed[0] != entry.source.name and (is_set or fed[2]):
                    errors.at(item, f"destination repository {repo} also receives "
                              f"{fed[0]} (entry at line {fed[1].line}); a tag set needs a "
                              "destination repository of its own")
                    continue
                if fed is None or is_set:
                    feeds[repo] = (entry.source.name, entry.position, is_set)
                if isinstance(entry, MirrorImage):
                    key = f"{repo}:{entry.destination.tag}"
                    if key in seen:
                        errors.at(item, f"destination {key} is also the destination of the entry "
                                  f"at line {seen[key].line}")
                        continue
                    seen[key] = entry.position
            if isinstance(entry, MirrorSet):
                tag_sets.append(entry)
            else:
                images.append(entry)
    _raise(errors)
    return MirrorConfig(where, tuple(images), prefix, tuple(approved), jobs, retries, policy,
                        tuple(tag_sets), signatures)


def _entry_fields(node: yaml.Node) -> dict[str, yaml.Node]:
    """An image entry's keys (already checked by :func:`_entry`; unknown ones dropped)."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {key.value: value for key, value in node.value
            if isinstance(key, yaml.ScalarNode) and key.value in _IMAGE_KEYS}


def _entry(node: yaml.Node, errors: _Errors, variables: Mapping[str, str], prefix: str,
           prefix_ref: tuple[str, str] | None, prefix_missing: list[str],
           require_destination: bool) -> MirrorImage | MirrorSet | None:
    fields: dict[str, yaml.Node]
    if isinstance(node, yaml.ScalarNode):
        fields = {"source": node}
    elif isinstance(node, yaml.MappingNode):
        fields = _mapping(node, _IMAGE_KEYS, errors, "image entry")
        if "source" not in fields:
            errors.at(node, "image entry without 'source:'")
            return None
    else:
        errors.at(node, "an image entry is a reference string or a mapping with 'source:'")
        return None
    raw = _string(fields["source"], errors, "source")
    if raw is None:
        return None
    text, missing = expand(raw, variables)
    if missing:
        errors.at(fields["source"], f"source uses unset variable(s) {', '.join(missing)}")
        return None
    try:
        source = parse_reference(text)
    except InputError as exc:
        errors.at(fields["source"], f"invalid source: {exc.message}")
        return None
    if "tags" in fields:
        return _tag_set(node, fields, source, text, errors, variables, prefix, prefix_ref,
                        prefix_missing, require_destination)
    if source.tag is None:
        if source.digest is not None:
            errors.at(fields["source"], f"pinned source {text!r} needs its tag too "
                      "(name:tag@sha256:...): the tag is what the mirror is tagged with")
            return None
        source = ImageRef(source.host, source.repository, "latest", None)

    position = errors.pos(node)
    if "destination" in fields:
        given = _given_destination(fields["destination"], errors, variables, require_destination,
                                   "registry.example.com/path/name[:tag]")
        if given is None:
            return None
        if given.ref is None:
            return MirrorImage(source, None, position, text, given.raw, True)
        if given.ref.digest is not None:
            errors.at(fields["destination"], "a destination cannot have a digest: the copy keeps "
                      "the source's digest and tags it")
            return None
        destination = ImageRef(given.ref.host, given.ref.repository, given.ref.tag or source.tag,
                               None)
        return MirrorImage(source, destination, position, text, given.raw, True)

    derived = f"{prefix.rstrip('/')}/{source.repository}:{source.tag}"
    if prefix_missing:
        if require_destination:
            errors.at(node, _unset_message(prefix_missing) + f" (the destination prefix {prefix!r}"
                      " applies to this image)")
            return None
        return MirrorImage(source, None, position, text, derived, False)
    if prefix_ref is None:
        return None  # the prefix error is reported already
    host, base = prefix_ref
    repository = f"{base}/{source.repository}" if base else source.repository
    return MirrorImage(source, ImageRef(host, repository, source.tag, None), position, text,
                       derived, False)


def _tag_set(node: yaml.Node, fields: dict[str, yaml.Node], source: ImageRef, text: str,
             errors: _Errors, variables: Mapping[str, str], prefix: str,
             prefix_ref: tuple[str, str] | None, prefix_missing: list[str],
             require_destination: bool) -> MirrorSet | None:
    """An entry with ``tags:``: a source repository, its rule, its destination repository."""
    if source.tag is not None or source.digest is not None:
        given = f":{source.tag}" if source.tag is not None else f"@{source.digest}"
        errors.at(fields["source"], f"with 'tags:', the source names a repository: drop "
                  f"{given!r} (the rule picks the tags)")
        return None
    rule = _rule(fields["tags"], errors)
    if rule is None:
        return None
    repo_source = ImageRef(source.host, source.repository)
    position = errors.pos(node)
    if "destination" in fields:
        named = _given_destination(fields["destination"], errors, variables, require_destination,
                                   "registry.example.com/path/name")
        if named is None:
            return None
        if named.ref is None:
            return MirrorSet(repo_source, None, rule, position, text, named.raw, True)
        if named.ref.tag is not None or named.ref.digest is not None:
            errors.at(fields["destination"], "with 'tags:', the destination names a repository: "
                      "each selected tag keeps its name there (drop the tag or digest)")
            return None
        return MirrorSet(repo_source, ImageRef(named.ref.host, named.ref.repository), rule,
                         position, text, named.raw, True)
    derived = f"{prefix.rstrip('/')}/{source.repository}"
    if prefix_missing:
        if require_destination:
            errors.at(node, _unset_message(prefix_missing) + f" (the destination prefix {prefix!r}"
                      " applies to this image)")
            return None
        return MirrorSet(repo_source, None, rule, position, text, derived, False)
    if prefix_ref is None:
        return None  # the prefix error is reported already
    host, base = prefix_ref
    repository = f"{base}/{source.repository}" if base else source.repository
    return MirrorSet(repo_source, ImageRef(host, repository), rule, position, text, derived, False)


def _rule(node: yaml.Node, errors: _Errors) -> TagRule | None:
    """``tags: all`` or a mapping of rule parts; every mistake reported where it is written."""
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str" \
            and node.value.strip() == "all":
        return TagRule.everything()
    if not isinstance(node, yaml.MappingNode):
        errors.at(node, "tags must be 'all' or a mapping of regex, exclude, semver, newest")
        return None
    parts = _mapping(node, _RULE_KEYS, errors, "tags")
    if not node.value:
        errors.at(node, "tags is empty: give regex, exclude, semver or newest (or 'tags: all')")
        return None
    if len(parts) != len(node.value):
        return None  # unknown or duplicate keys are reported already
    ok = True
    patterns: dict[str, list[str]] = {}
    nodes: dict[str, list[yaml.Node]] = {}
    for part in ("regex", "exclude"):
        if part not in parts:
            continue
        items = parts[part].value if isinstance(parts[part], yaml.SequenceNode) else [parts[part]]
        if not items:
            errors.at(parts[part], f"tags.{part} must be a pattern or a non-empty list of them")
            ok = False
            continue
        nodes[part] = list(items)
        for item in items:
            text = _scalar_text(item, errors, f"tags.{part}")
            if text is None:
                ok = False
            else:
                patterns.setdefault(part, []).append(text)
    version_range: str | None = None
    if "semver" in parts:
        version_range = _scalar_text(parts["semver"], errors, "tags.semver")
        ok = ok and version_range is not None
    newest: int | None = None
    if "newest" in parts:
        item = parts["newest"]
        if not isinstance(item, yaml.ScalarNode) or item.tag != "tag:yaml.org,2002:int":
            errors.at(item, "tags.newest must be a whole number (how many of the newest tags)")
            ok = False
        else:
            newest = int(item.value.replace("_", ""), 0)
    if not ok:
        return None
    try:
        return TagRule.build(regex=patterns.get("regex", ()), exclude=patterns.get("exclude", ()),
                             semver=version_range, newest=newest)
    except RuleError as exc:
        where = parts[exc.part]
        if exc.part in nodes:
            where = nodes[exc.part][exc.item or 0]
        errors.at(where, f"tags.{exc.part}: {exc.message}", _char_column(where, exc.offset))
        return None


def _char_column(node: yaml.Node, offset: int | None) -> int | None:
    """The 1-based column of character ``offset`` of a one-line scalar written plain or in single
    quotes without escapes (where text and file agree character for character), else None."""
    if offset is None or not isinstance(node, yaml.ScalarNode) or node.style not in (None, "'"):
        return None
    start, end = node.start_mark, node.end_mark
    quote = 1 if node.style == "'" else 0
    if start.line != end.line or end.column - start.column != len(node.value) + 2 * quote:
        return None
    return start.column + 1 + quote + offset


def _scalar_text(node: yaml.Node, errors: _Errors, what: str) -> str | None:
    """A scalar's text as written (``semver: 16`` is the range "16", not a number)."""
    if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null" \
            or not node.value.strip():
        errors.at(node, f"{what} must be a non-empty string")
        return None
    return str(node.value)



@dataclass(frozen=True)
class _GivenDestination:
    raw: str  # as written in the file
    ref: ImageRef | None  # None: a variable is unset and the caller does not need it


def _given_destination(node: yaml.Node, errors: _Errors, variables: Mapping[str, str],
                       require_destination: bool, example: str) -> _GivenDestination | None:
    """The destination an entry names (an image or a tag set): expanded, parsed, its registry
    host first. ``None`` when an error was reported; each caller adds its own tag rule."""
    raw = _string(node, errors, "destination")
    if raw is None:
        return None
    text, missing = expand(raw, variables)
    if missing:
        if require_destination:
            errors.at(node, _unset_message(missing))
            return None
        return _GivenDestination(raw, None)
    try:
        ref = parse_reference(text)
    except InputError as exc:
        errors.at(node, f"invalid destination: {exc.message}")
        return None
    if not text.strip().startswith(ref.host + "/"):
        errors.at(node, f"destination {text!r} must start with its registry host ({example})")
        return None
    return _GivenDestination(raw, ref)


def _unset_message(names: list[str]) -> str:
    hint = ""
    if "REGISTRY" in names:
        hint = (": set KILN_REGISTRY (CI_REGISTRY_IMAGE in GitLab CI) or start kiln's local "
                "registry")
    return f"destination uses unset variable(s) {', '.join('${' + n + '}' for n in names)}{hint}"


def _mapping(node: yaml.MappingNode, allowed: tuple[str, ...], errors: _Errors,
             what: str) -> dict[str, yaml.Node]:
    result: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str) or key not in allowed:
            suggestion = _closest(str(key), allowed)
            errors.at(key_node, f"unknown key {key!r} in {what}"
                      + (f" (did you mean {suggestion!r}?)" if suggestion else "")
                      + f"; allowed: {', '.join(allowed)}")
            continue
        if key in result:
            errors.at(key_node, f"duplicate key {key!r} in {what}")
            continue
        result[key] = value_node
    return result


def _closest(key: str, allowed: tuple[str, ...]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _string(node: yaml.Node, errors: _Errors, what: str) -> str | None:
    if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str" \
            or not node.value.strip():
        errors.at(node, f"{what} must be a non-empty string")
        return None
    return str(node.value).strip()


def _bool(node: yaml.Node | None, errors: _Errors, what: str, default: bool) -> bool:
    if node is None:
        return default
    if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
        errors.at(node, f"{what} must be true or false")
        return default
    return node.value.lower() in {"true", "yes", "on", "y"}


def _int(node: yaml.Node | None, errors: _Errors, what: str, low: int, high: int,
         default: int) -> int:
    if node is None:
        return default
    if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:int":
        errors.at(node, f"{what} must be a whole number")
        return default
    value = int(node.value.replace("_", ""), 0)
    if not low <= value <= high:
        errors.at(node, f"{what} must be between {low} and {high}, not {value}")
        return default
    return value


def _number(node: yaml.Node | None, errors: _Errors, what: str, low: float,
            default: float) -> float:
    if node is None:
        return default
    if not isinstance(node, yaml.ScalarNode) or node.tag not in {
            "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}:
        errors.at(node, f"{what} must be a number of seconds")
        return default
    value = float(node.value.replace("_", ""))
    if value < low:
        errors.at(node, f"{what} must be at least {low:g}, not {value:g}")
        return default
    return value


def _raise(errors: _Errors) -> None:
    if errors.items:
        count = len(errors.items)
        head = errors.items[0] if count == 1 else (
            f"{errors.path}: {count} problems in the mirror configuration:\n  "
            + "\n  ".join(errors.items))
        raise ConfigError(head, hint="see the schema in the kiln README (Mirroring)")


def config_path(project_dir: Path, configured: Path | None, override: str | Path | None = None
                ) -> Path:
    """Which mirrors file to read: the task flag (relative to the working directory, as on any
    command line), else the setting (relative to the project), else ``mirrors.yml``."""
    if override is not None:
        return Path(override).expanduser().absolute()
    return configured or project_dir / DEFAULT_CONFIG


def load_config(path: Path, variables: Mapping[str, str], *,
                require_destination: bool = True) -> MirrorConfig:
    """Read and validate a mirrors file; a missing file is a :class:`ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"mirror configuration {path} not found",
                          hint="create it (see the README's Mirroring section) or pass --config "
                               "/ set KILN_MIRROR_CONFIG") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read mirror configuration {path}: {exc}") from None
    return parse_config(text, path, variables, require_destination=require_destination)
