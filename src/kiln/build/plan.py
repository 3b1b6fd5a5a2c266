"""The build plan, pure: build files -> image graph, input keys, pinned Containerfiles, steps.

Nothing here runs a process or speaks HTTP: registry answers (digests) come in as values,
files are read from the folders given. :mod:`kiln.build.run` does the I/O around it.

Decisions (docs/tags.md lists the tags):

* **Our images** are FROM lines naming ``<registry>/<name>[:tag|@digest]``; ``name`` must have a
  build file, or it is an input error with the Containerfile line. Images under the upstream
  prefix (``<registry>/mirror`` in the local flow) are upstream images.
* **Input key** (:func:`input_key`): sha256 over a canonical JSON document of the preprocessed
  Containerfile, the build args that can reach the image, the architecture, the image format,
  the digest of every FROM image (per architecture) and the content and executable bit of every
  file a COPY/ADD step can read from the context, after ``.containerignore``/``.dockerignore``.
  ``REGISTRY``, ``UPSTREAM_REGISTRY`` and ``BASE_IMAGE_TAG`` only name FROM images (whose
  digests are in the key), so they count only when a non-FROM line uses them. Labels (source,
  revision, created) and build secrets are not inputs: a reused image keeps the labels of the
  build that made it. ``ADD <url>`` counts by its URL, not what it serves.
* **Pinning**: the Containerfile kiln writes has every FROM image replaced by
  ``<repository>@<digest>`` of the platform's own manifest, so the build uses exactly what the
  key covers, and parallel builds for different architectures never pull the same name.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kiln.build.graph import ImageGraph, Node, find_cycle
from kiln.containerfile import FromLine, instructions, substitute
from kiln.credentials import source_line
from kiln.errors import ConfigError, InputError
from kiln.settings import Settings, validate_image_name
from kiln.tag_policy import pipeline_image_ref, pipeline_tag

KEY_LABEL = "dev.kiln.input-key"
KEY_VERSION = 1
# build args kiln passes to locate FROM images; they are inputs only where other lines use them
LOCATION_ARGS = ("REGISTRY", "UPSTREAM_REGISTRY", "BASE_REGISTRY", "BASE_IMAGE_TAG")
IGNORE_FILES = (".containerignore", ".dockerignore")


# -- names, args, labels ---------------------------------------------------------------------

def push_format(image_format: str) -> str:
    """The manifest format ``buildah push`` must keep: docker images stay Docker v2s2."""
    return "v2s2" if image_format == "docker" else "oci"


def list_images(builds_dir: Path) -> list[str]:
    """Names of the images in ``builds_dir`` (``<name>.in`` files with valid names)."""
    if not builds_dir.is_dir():
        return []
    names = []
    for path in builds_dir.glob("*.in"):
        try:
            names.append(validate_image_name(path.name[:-3]))
        except ConfigError:
            continue
    return sorted(names)


def build_file_for(settings: Settings, image: str) -> Path:
    """``builds/<image>.in``; an :class:`InputError` listing the images when it does not exist.

    The name is validated first (no ``/``, no ``..``), so the path cannot leave ``builds/``.
    """
    validate_image_name(image)
    path = settings.builds_dir / f"{image}.in"
    if not path.is_file():
        known = list_images(settings.builds_dir)
        raise InputError(
            f"unknown image {image!r}: {path} does not exist",
            hint=(f"images in {settings.builds_dir}: {', '.join(known)}" if known
                  else f"no build files (*.in) in {settings.builds_dir}"),
        )
    return path


def build_arguments(settings: Settings, image: str, registry: str, upstream_registry: str,
                    base_image_tag: str | None = None) -> dict[str, str]:
    """Build args of every build (CONTRACT): REGISTRY, UPSTREAM_REGISTRY, BASE_IMAGE_TAG, and
    BASE_REGISTRY when the base-registry setting is given (setup-from-base defaults it to
    REGISTRY), then ``settings.build_args`` and the image's own ``build_args`` (later ones win)."""
    args = {
        "REGISTRY": registry,
        "UPSTREAM_REGISTRY": upstream_registry,
        "BASE_IMAGE_TAG": settings.base_image_tag,
    }
    if settings.base_registry:
        args["BASE_REGISTRY"] = settings.base_registry
    args.update(settings.build_args)
    args.update(settings.image_settings(image).build_args)
    if base_image_tag is not None:
        args["BASE_IMAGE_TAG"] = base_image_tag
    return args


def oci_labels(source: str | None, revision: str | None, created: str) -> dict[str, str]:
    """The OCI annotations kiln sets; unknown source/revision are left out, never guessed."""
    labels: dict[str, str] = {}
    if source:
        labels["org.opencontainers.image.source"] = source
    if revision:
        labels["org.opencontainers.image.revision"] = revision
    labels["org.opencontainers.image.created"] = created
    return labels


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def strip_userinfo(url: str) -> str:
    """``https://user:token@host/x`` -> ``https://host/x``: a remote URL may carry a token."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url, flags=re.IGNORECASE)


def parse_jobs(value: object, cpu_count: int | None) -> int:
    """``--jobs``: a whole number >= 1; default (``None``) the CPU count."""
    if value is None or value == "":
        return max(1, cpu_count or 1)
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise InputError(f"--jobs {value!r} is not a number of parallel builds",
                         hint="pass a whole number of 1 or more (default: the CPU count)")
    return int(text)


# -- FROM lines ------------------------------------------------------------------------------

def image_name_in(ref: str, registry: str) -> str | None:
    """``name`` when ``ref`` is ``<registry>/<name>[:tag][@digest]`` (one path component)."""
    prefix = registry.rstrip("/") + "/"
    if not ref.startswith(prefix):
        return None
    name = re.split(r"[:@]", ref[len(prefix):], maxsplit=1)[0]
    return name if name and "/" not in name else None


def own_dependencies(froms: Sequence[FromLine], registry: str, known_images: Sequence[str],
                     *, exclude: str | None = None) -> list[tuple[str, str]]:
    """(image name, reference) of every FROM naming one of our images: ``<registry>/<name>...``
    where ``builds/<name>.in`` exists. Earlier stage names are not images."""
    result: list[tuple[str, str]] = []
    for line in froms:
        if not line.is_image:
            continue
        name = image_name_in(line.image, registry)
        if (name is not None and name in known_images and name != exclude
                and (name, line.image) not in result):
            result.append((name, line.image))
    return result


def upstream_names(froms: Sequence[FromLine], upstream_registry: str) -> list[str]:
    """``library/debian:bookworm`` for each FROM under ``upstream_registry``."""
    prefix = upstream_registry.rstrip("/") + "/"
    names: list[str] = []
    for line in froms:
        if line.image.startswith(prefix):
            name = line.image[len(prefix):]
            if name not in names:
                names.append(name)
    return names


def platform_mismatch(output: str) -> str | None:
    """The base image's architecture when buildah warns it is not the one asked for.

    buildah 1.28 only warns ("image platform ({amd64 linux ...}) does not match the expected
    platform") and then builds, so an "arm64" image would contain amd64 binaries.
    """
    match = re.search(r"image platform \(\{(\S+) (\S+)[^)]*\) does not match the expected "
                      r"platform", output)
    return match[1] if match else None


def pin_from_lines(text: str, froms: Sequence[FromLine], pins: Mapping[str, str]) -> str:
    """``text`` with the image of each FROM line in ``pins`` (resolved reference -> pinned
    reference) written out as the pinned reference: the build reads what the key covers."""
    lines = text.splitlines(keepends=True)
    for line in froms:
        pinned = pins.get(line.image)
        if pinned is None or not line.is_image:
            continue
        for index in range(line.line - 1, len(lines)):
            if line.written in lines[index]:
                lines[index] = lines[index].replace(line.written, pinned, 1)
                break
    return "".join(lines)


def declare_after_from(text: str, names: Sequence[str]) -> str:
    """``text`` with ``ARG <names>`` after each FROM: a build arg reaches a stage's RUN steps
    only when the stage declares it (and, as an ARG, it stays out of the image config)."""
    lines = text.splitlines(keepends=True)
    declare = "ARG " + " ".join(names) + "\n"
    for end in sorted({i.end_line for i in instructions(text) if i.keyword == "FROM"},
                      reverse=True):
        if end <= len(lines) and not lines[end - 1].endswith("\n"):
            lines[end - 1] += "\n"
        lines.insert(end, declare)
    return "".join(lines)


def strip_reference(ref: str) -> str:
    """``host/repo:tag@digest`` -> ``host/repo`` (a tag only after the last ``/``)."""
    ref = ref.split("@", 1)[0]
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    return ref[:colon] if colon > slash else ref


# -- the graph -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """One image's build file, preprocessed, with its FROM lines under the run's build args."""

    image: str
    file: str                    # builds/<image>.in
    containerfile: str           # where kiln writes the preprocessed text (for file:line)
    text: str
    build_args: Mapping[str, str]
    froms: tuple[FromLine, ...]
    origins: Mapping[str, str] = field(default_factory=dict)  # build file, includes: name -> text

    def from_line(self, dep: str, registry: str) -> FromLine:
        return next(f for f in self.froms if image_name_in(f.image, registry) == dep)

    def where(self, line: FromLine) -> str:
        """``builds/<image>.in:<n> (Containerfile <path>:<m>)``: the line to fix, found by its
        text (the preprocessor keeps no line origins), and the line in the Containerfile."""
        origin = source_line(line.text, [line.written], self.origins) if self.origins else None
        here = f"{self.containerfile}:{line.line}"
        return f"{origin} (Containerfile {here})" if origin else here


def image_deps(source: Source, registry: str, upstream_registry: str,
               known_images: Sequence[str],
               external: Callable[[str], bool] | None = None) -> tuple[str, ...]:
    """Our images ``source`` is built FROM (sorted). A FROM naming ``<registry>/<name>``
    without ``builds/<name>.in`` is an :class:`InputError` with its line, unless
    ``external(reference)`` says the registry has that image (made elsewhere: used as is)."""
    upstream = upstream_registry.rstrip("/") + "/"
    deps: set[str] = set()
    for line in source.froms:
        if not line.is_image or line.image.startswith(upstream):
            continue
        name = image_name_in(line.image, registry)
        if name is None:
            continue
        if name not in known_images:
            if external is not None and external(line.image):
                continue
            raise InputError(
                f"{source.where(line)}: {source.image} is built FROM "
                f"{line.image}, but there is no build file builds/{name}.in "
                f"(line {line.line} of the Containerfile kiln made from {source.file}), "
                "and the registry does not have it",
                hint=f"add builds/{name}.in, or name an image outside {registry} "
                     f"(images: {', '.join(known_images)})")
        if name == source.image:
            raise InputError(f"{source.where(line)}: {source.image} is built "
                             f"FROM itself ({line.image})",
                             hint="an image cannot be built FROM itself")
        deps.add(name)
    return tuple(sorted(deps))


def make_graph(sources: Mapping[str, Source], *, registry: str, upstream_registry: str,
               known_images: Sequence[str], arches: Sequence[str],
               external: Callable[[str], bool] | None = None) -> ImageGraph:
    """The graph of ``sources`` (every dependency must be among them). Cycles, missing build
    files and FROM ``--platform`` flags that contradict the run's architectures are
    :class:`InputError` s with the Containerfile line."""
    deps = {name: image_deps(src, registry, upstream_registry, known_images, external)
            for name, src in sources.items()}
    cycle = find_cycle(deps)
    if cycle:
        steps = [f"{sources[a].where(sources[a].from_line(b, registry))} "
                 f"({a} FROM {b})" for a, b in zip(cycle, cycle[1:], strict=False)]
        raise InputError(f"dependency cycle between images: {' -> '.join(cycle)}\n  "
                         + "\n  ".join(steps),
                         hint="an image cannot be built FROM itself through other images")
    for name, src in sources.items():
        for line in src.froms:
            dep = image_name_in(line.image, registry)
            wanted = (line.platform or "").rsplit("/", 1)[-1]
            if dep in deps[name] and wanted and "$" not in wanted and wanted not in arches:
                raise InputError(
                    f"{src.where(line)}: {name} takes {dep} for platform "
                    f"{line.platform}, but this run builds {', '.join(arches)}",
                    hint="images of one graph are built for the same architectures: remove "
                         "--platform from the FROM line or build that architecture")
    missing = sorted({d for ds in deps.values() for d in ds} - set(sources))
    if missing:
        raise InputError(f"images {', '.join(missing)} were not read",
                         hint="plan the graph from every image the roots need")
    return ImageGraph({name: Node(name, tuple(arches), deps[name], src.file)
                       for name, src in sources.items()})


def read_sources(roots: Iterable[str], load: Callable[[str], Source], *,
                 registry: str, upstream_registry: str, known_images: Sequence[str],
                 follow: bool = True,
                 external: Callable[[str], bool] | None = None) -> dict[str, Source]:
    """The sources of ``roots`` and (with ``follow``) of every image they are built FROM."""
    sources: dict[str, Source] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in sources:
            continue
        sources[name] = load(name)
        if follow:
            todo.extend(image_deps(sources[name], registry, upstream_registry, known_images,
                                   external))
    return sources


# -- context files ---------------------------------------------------------------------------

def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex (Go filepath.Match plus ``**``, as buildah uses)."""
    out = ""
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**", index):
            index += 2
            if pattern.startswith("/", index):
                index += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.find("]", index + 1)
            if end < 0:
                out += re.escape(char)
            else:
                body = pattern[index + 1:end].replace("\\", "\\\\")
                out += "[" + ("^" + body[1:] if body.startswith("^") else body) + "]"
                index = end
        elif char == "\\" and index + 1 < len(pattern):
            index += 1
            out += re.escape(pattern[index])
        else:
            out += re.escape(char)
        index += 1
    return re.compile(out + "$")


@dataclass(frozen=True)
class IgnoreRules:
    """The ``.containerignore``/``.dockerignore`` of a context: later patterns win, ``!``
    re-includes, a pattern matching a folder excludes what is under it."""

    patterns: tuple[tuple[bool, re.Pattern[str]], ...] = ()
    file: str | None = None

    @classmethod
    def parse(cls, text: str, file: str | None = None) -> IgnoreRules:
        patterns: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            line = os.path.normpath(line[1:].strip() if keep else line).lstrip("/")
            if line in {"", "."}:
                continue
            patterns.append((keep, _ignore_regex(line)))
        return cls(tuple(patterns), file)

    @classmethod
    def read(cls, context: Path) -> IgnoreRules:
        for name in IGNORE_FILES:
            path = context / name
            if path.is_file():
                return cls.parse(path.read_text(encoding="utf-8", errors="replace"), name)
        return cls()

    def excluded(self, relpath: str) -> bool:
        parts = relpath.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        result = False
        for keep, regex in self.patterns:
            if any(regex.match(prefix) for prefix in prefixes):
                result = not keep
        return result


@dataclass(frozen=True)
class ContextEntry:
    """One file a COPY/ADD step can read: path in the context, kind, executable bit, content
    digest (symlinks: their target)."""

    path: str
    kind: str  # f(ile), d(irectory), l(ink), u(rl), m(issing)
    executable: bool = False
    digest: str = ""

    def as_list(self) -> list[object]:
        return [self.path, self.kind, self.executable, self.digest]


def copy_sources(text: str, build_args: Mapping[str, str]) -> list[str]:
    """The context paths (patterns) COPY/ADD steps read: ``--from`` copies and heredocs
    (``COPY <<EOF``) read no context file."""
    variables = dict(build_args)
    sources: list[str] = []
    for instruction in instructions(text):
        if instruction.keyword == "ARG":
            for item in instruction.arguments.split():
                name, eq, default = item.partition("=")
                if eq and name not in build_args:
                    variables[name] = substitute(default, variables)
        if instruction.keyword not in {"COPY", "ADD"}:
            continue
        words = instruction.arguments.split()
        if words and words[0].startswith("["):
            try:
                words = [str(w) for w in json.loads(instruction.arguments)]
            except ValueError:
                pass
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        for word in words[:-1]:
            if word.startswith("<<"):
                continue
            sources.append(substitute(word, variables))
    return sources


def _digest_file(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def context_entries(context: Path, sources: Sequence[str],
                    ignore: IgnoreRules | None = None) -> list[ContextEntry]:
    """Every file and folder ``sources`` (COPY/ADD patterns) can read from ``context``, after
    the ignore rules, sorted; contents by digest (mtime plays no part)."""
    ignore = IgnoreRules.read(context) if ignore is None else ignore
    root = context.resolve()
    entries: dict[str, ContextEntry] = {}

    def add(path: Path) -> None:
        rel = path.relative_to(root).as_posix() if path != root else "."
        if rel != "." and ignore.excluded(rel):
            return
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            entries[rel] = ContextEntry(rel, "l", False, os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            entries[rel] = ContextEntry(rel, "d")
            for child in sorted(path.iterdir()):
                add(child)
        elif stat.S_ISREG(info.st_mode):
            entries[rel] = ContextEntry(rel, "f", bool(info.st_mode & 0o111), _digest_file(path))

    for source in sources:
        if re.match(r"^[a-z][a-z0-9+.-]*://", source, re.IGNORECASE) or source.startswith(
                "git@"):
            entries[source] = ContextEntry(source, "u")
            continue
        pattern = os.path.normpath(source.lstrip("/")) if source.strip("/") else "."
        if pattern.startswith(".."):
            pattern = "."
        matches = _glob(root, pattern)
        if not matches:
            entries.setdefault(pattern, ContextEntry(pattern, "m"))
        for match in matches:
            add(match)
    return [entries[name] for name in sorted(entries)]


def _glob(root: Path, pattern: str) -> list[Path]:
    if pattern == ".":
        return [root]
    if not any(c in pattern for c in "*?["):
        path = root / pattern
        return [path] if path.exists() or path.is_symlink() else []
    found: list[Path] = [root]
    for part in pattern.split("/"):
        following: list[Path] = []
        for base in found:
            if not base.is_dir():
                continue
            if any(c in part for c in "*?["):
                following += sorted(p for p in base.iterdir() if fnmatch.fnmatchcase(p.name, part))
            elif (base / part).exists():
                following.append(base / part)
        found = following
    return found


# -- the input key ---------------------------------------------------------------------------

def key_build_args(text: str, build_args: Mapping[str, str]) -> dict[str, str]:
    """The build args that can reach the image: every arg, except the ones that only locate
    FROM images (their digests are in the key) when no other line uses them."""
    others = "\n".join(i.text_with_heredocs() for i in instructions(text)
                       if i.keyword not in {"FROM", "ARG"})
    result = {}
    for name, value in sorted(build_args.items()):
        if name in LOCATION_ARGS and not re.search(
                rf"\$(?:{name}\b|\{{{name}\b)", others):
            continue
        result[name] = value
    return result


def input_key(*, containerfile: str, build_args: Mapping[str, str], arch: str,
              image_format: str, from_digests: Sequence[tuple[str, str]],
              context: Sequence[ContextEntry]) -> str:
    """``sha256:<hex>`` over everything a build reads (see the module docstring).

    ``containerfile`` is the preprocessed text *before* pinning (pins are in ``from_digests``),
    ``from_digests`` pairs each FROM line's image (in order) with its digest."""
    document = {
        "kiln-input-key": KEY_VERSION,
        "containerfile": containerfile,
        "build-args": key_build_args(containerfile, build_args),
        "arch": arch,
        "format": image_format,
        "from": [[strip_reference(ref), digest] for ref, digest in from_digests],
        "context": [entry.as_list() for entry in context],
    }
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- steps -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """Where images go: our registry prefix, the upstream prefix, push or not."""

    registry: str
    upstream_registry: str
    push: bool
    local: bool = False


@dataclass(frozen=True)
class Step:
    """One image to build (or reuse) for one architecture."""

    image: str
    arch: str | None
    ref: str
    text: str
    build_args: Mapping[str, str]
    froms: tuple[FromLine, ...]
    dependency: bool = False
    built_deps: tuple[str, ...] = ()
    key: str | None = None
    pinned_text: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def build_text(self) -> str:
        """The Containerfile the build reads (pinned when the key is known)."""
        return self.pinned_text if self.pinned_text is not None else self.text


def make_step(source: Source, *, target: Target, pipeline_id: str, arch: str | None,
              dependency: bool, built_deps: Sequence[str]) -> Step:
    """The step for ``source`` in this pipeline (``p-<id>[-<arch>]``), before its key."""
    return Step(source.image, arch, pipeline_image_ref(target.registry, source.image,
                                                       pipeline_id, arch),
                source.text, dict(source.build_args), source.froms, dependency,
                tuple(built_deps))


def dependency_tag(pipeline_id: str, arch: str | None) -> str:
    """``BASE_IMAGE_TAG`` for images whose dependencies this run builds or reuses."""
    return pipeline_tag(pipeline_id, arch)
