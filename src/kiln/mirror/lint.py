"""Reference lint: every image our builds and CI jobs pull must come through the mirror.

Reads the ``FROM`` lines of every preprocessed build file and the ``image:`` / ``services:`` keys
of the CI YAML, resolves variables the way the build / GitLab would (``ARG`` defaults and
build args; CI ``variables:``), and reports each reference that pulls from Docker Hub — or from
any registry that is not approved in the mirror configuration — naming file, line and the
mirrored reference to use instead (and the ``mirrors.yml`` entry to add when it is not mirrored
yet).

A reference counts as mirrored / our own when it starts with one of :data:`TRUSTED_VARIABLES`
(``${UPSTREAM_REGISTRY}/library/debian:bookworm`` is how our build files reach the mirror;
``$CI_REGISTRY_IMAGE/...`` is the project's own registry; GitLab's dependency proxy is a mirror
too), or when its registry is approved or is a destination of the mirror configuration. Such
variables are never replaced by their defaults: ``ARG UPSTREAM_REGISTRY=docker.io`` is a default
for people outside our setup, not what our builds use.

The core is pure (texts in, findings out); :func:`lint_project` is the adapter that reads files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from kiln import containerfile
from kiln.errors import InputError
from kiln.mirror.config import MirrorConfig, MirrorImage, MirrorSet
from kiln.registry.reference import is_docker_hub, parse_reference, split_repository
from kiln.settings import Settings

TRUSTED_VARIABLES = frozenset({
    "UPSTREAM_REGISTRY", "REGISTRY", "CI_REGISTRY", "CI_REGISTRY_IMAGE",
    "CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX", "CI_DEPENDENCY_PROXY_DIRECT_GROUP_IMAGE_PREFIX",
})

_LEADING_VAR = re.compile(r"^\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class ImageUse:
    """One place that names an image to pull."""

    file: str
    line: int
    written: str  # as in the file (FROM argument, image: value)
    resolved: str  # after variable substitution
    kind: str  # "FROM", "image", "services"
    build_file: bool = True


@dataclass(frozen=True)
class Finding:
    use: ImageUse
    severity: str  # "error" or "warning"
    message: str

    def __str__(self) -> str:
        return f"{self.use.file}:{self.use.line}: {self.severity}: {self.message}"


def substitute(text: str, values: Mapping[str, str], *, depth: int = 0) -> str:
    """Replace ``$NAME``, ``${NAME}``, ``${NAME:-default}`` ... from ``values`` (Dockerfile rules,
    :func:`kiln.containerfile.substitute`); trusted variables and unknown names stay as written,
    and a value naming other variables is expanded too, as GitLab does for CI variables."""
    return containerfile.substitute(text, _Expanded(values, depth), keep=TRUSTED_VARIABLES,
                                    keep_unset=True)


class _Expanded(Mapping[str, str]):
    """``values`` with each value expanded in turn (ten levels at most); an empty value counts
    as unknown, so ``$X`` stays as written and the lint warns about it."""

    def __init__(self, values: Mapping[str, str], depth: int) -> None:
        self._values = values
        self._depth = depth

    def __getitem__(self, name: str) -> str:
        value = self._values[name]
        if value == "":
            raise KeyError(name)
        return substitute(value, self._values, depth=self._depth + 1) if self._depth < 10 \
            else value

    def __iter__(self) -> Iterator[str]:
        return (name for name, value in self._values.items() if value != "")

    def __len__(self) -> int:
        return sum(1 for _ in self)


# -- Containerfiles --------------------------------------------------------------------------

def from_uses(text: str, file: str, build_args: Mapping[str, str] | None = None,
              locate: Callable[[int, str], tuple[str, int]] | None = None) -> list[ImageUse]:
    """The images a Containerfile's ``FROM`` lines pull (stages and ``scratch`` excluded).

    The Containerfile is read by :mod:`kiln.containerfile`, as the build reads it: ``ARG``
    defaults declared before the first ``FROM`` (and ``build_args``, which override them as
    ``--build-arg`` does) are substituted, trusted variables are kept. ``locate`` maps an output
    line number and its text to the original file and line (preprocessed files come from
    several sources).
    """
    uses: list[ImageUse] = []
    for line in containerfile.parse_from_lines(text, dict(build_args or {}),
                                               keep=TRUSTED_VARIABLES, keep_unset=True):
        if not line.is_image:
            continue
        where_file, where_line = locate(line.line, line.text) if locate else (file, line.line)
        uses.append(ImageUse(where_file, where_line, line.written, line.image, "FROM", True))
    return uses


# -- GitLab CI YAML ----------------------------------------------------------------------------

_NOT_JOBS = frozenset({"stages", "include", "workflow", "variables", "spec"})


def _scalar_map(node: yaml.Node | None) -> dict[str, str]:
    """A ``variables:`` mapping (``NAME: value`` or ``NAME: {value: ...}``)."""
    result: dict[str, str] = {}
    if not isinstance(node, yaml.MappingNode):
        return result
    for key, value in _pairs(node):
        if isinstance(value, yaml.ScalarNode):
            result[key] = str(value.value)
        elif isinstance(value, yaml.MappingNode):
            inner = dict(_pairs(value))
            if isinstance(inner.get("value"), yaml.ScalarNode):
                result[key] = str(inner["value"].value)
    return result


def _pairs(node: yaml.MappingNode) -> list[tuple[str, yaml.Node]]:
    """Key/value pairs of a mapping with YAML merge keys (``<<: *anchor``) applied."""
    pairs: list[tuple[str, yaml.Node]] = []
    merged: list[tuple[str, yaml.Node]] = []
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if key == "<<":
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [
                value_node]
            for source in sources:
                if isinstance(source, yaml.MappingNode):
                    merged.extend(_pairs(source))
        elif isinstance(key, str):
            pairs.append((key, value_node))
    own = {k for k, _ in pairs}
    return pairs + [(k, v) for k, v in merged if k not in own]


def ci_uses(text: str, file: str) -> list[ImageUse]:
    """The images of ``image:`` and ``services:`` keys in a GitLab CI file, with job and global
    ``variables:`` substituted."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{file}:{mark.line + 1}" if mark else file
        raise InputError(f"{where}: not valid YAML: {exc.problem or exc}") from None
    if not isinstance(root, yaml.MappingNode):
        return []
    top = dict(_pairs(root))
    global_vars = _scalar_map(top.get("variables"))
    uses: list[ImageUse] = []
    for name, job in _pairs(root):
        if name in _NOT_JOBS or not isinstance(job, yaml.MappingNode):
            continue
        fields = dict(_pairs(job))
        values = {**global_vars, **_scalar_map(fields.get("variables"))}
        image = fields.get("image")
        if image is not None:
            uses.extend(_ci_image(image, file, values, "image"))
        services = fields.get("services")
        if isinstance(services, yaml.SequenceNode):
            for item in services.value:
                uses.extend(_ci_image(item, file, values, "services"))
    return uses


def _ci_image(node: yaml.Node, file: str, values: Mapping[str, str],
              kind: str) -> list[ImageUse]:
    if isinstance(node, yaml.MappingNode):
        name = dict(_pairs(node)).get("name")
        if name is None:
            return []
        node = name
    if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
        return []
    written = str(node.value).strip()
    return [ImageUse(file, node.start_mark.line + 1, written, substitute(written, values), kind,
                     False)]


# -- the check ---------------------------------------------------------------------------------

def _approved(host: str, repository: str, approved: Iterable[str]) -> bool:
    full = f"{host}/{repository}"
    return any(full == entry or full.startswith(entry.rstrip("/") + "/") or host == entry
               for entry in approved)


def suggestion_for(use: ImageUse, config: MirrorConfig | None, source: str) -> str:
    """The mirrored reference to write instead of ``source``, or how to get one."""
    ref = parse_reference(source)
    tag = ref.tag or "latest"
    digest = f"@{ref.digest}" if ref.digest else ""
    entry = config.mirrored(ref) if config is not None else None
    if entry is not None and entry.explicit_destination:
        target = str(entry.destination) if entry.destination else entry.destination_text
        return f"use {target}{digest} (mirrored by {config.path if config else 'mirrors.yml'}:" \
               f"{entry.position.line})"
    if use.build_file:
        target = f"${{UPSTREAM_REGISTRY}}/{ref.repository}:{tag}{digest}"
    else:
        prefix = config.destination_prefix if config else "${REGISTRY}/mirror"
        prefix = prefix.replace("${REGISTRY}", "$CI_REGISTRY_IMAGE")
        target = f"{prefix.rstrip('/')}/{ref.repository}:{tag}{digest}"
    if entry is not None:
        return f"use {target} (mirrored by {config.path if config else 'mirrors.yml'}:" \
               f"{entry.position.line})"
    source_entry = f"{ref.host}/{ref.repository}:{tag}{digest}"
    where = config.path if config else "mirrors.yml"
    return f"add `- source: {source_entry}` to {where} (images:), run the mirror, then use {target}"


def check_uses(uses: Iterable[ImageUse], config: MirrorConfig | None,
               own_registries: Iterable[str] = ()) -> list[Finding]:
    """Findings for references that bypass the mirror (errors) or cannot be resolved
    (warnings)."""
    approved = set(config.approved_registries if config else ())
    approved |= {r for r in own_registries if r}
    if config is not None:  # the mirror's destinations: single images and tag sets alike
        entries: list[MirrorImage | MirrorSet] = [*config.images, *config.tag_sets]
        approved |= {e.destination.host for e in entries if e.destination is not None}
    findings: list[Finding] = []
    for use in uses:
        text = use.resolved
        lead = _LEADING_VAR.match(text)
        if lead:
            name = lead[1] or lead[2]
            if name in TRUSTED_VARIABLES:
                continue
            findings.append(Finding(use, "warning", f"{use.written}: cannot tell which registry "
                                    f"${name} names; give it a default (ARG {name}=... / CI "
                                    "variables:) so the lint can check it"))
            continue
        if "$" in text:
            findings.append(Finding(use, "warning", f"{use.written}: unresolved variable in "
                                    f"{text!r}; give it a default so the lint can check it"))
            continue
        try:
            ref = parse_reference(text)
        except InputError as exc:
            findings.append(Finding(use, "error", f"{use.written}: {exc.message}"))
            continue
        if not is_docker_hub(ref.host) and _approved(ref.host, ref.repository, approved):
            continue
        origin = "Docker Hub (pull rate limited)" if is_docker_hub(ref.host) else \
            f"{ref.host}, which is not an approved registry"
        shown = use.written if use.written == text else f"{use.written} (= {text})"
        findings.append(Finding(use, "error", f"{shown} pulls from {origin}; "
                                + suggestion_for(use, config, text)))
    return findings


# -- the adapter -------------------------------------------------------------------------------

def _locator(source: Path, text_of: Callable[[Path], str], search: list[Path]
             ) -> Callable[[int, str], tuple[str, int]]:
    """Map a preprocessed ``FROM`` line back to the file and line it came from: the build file
    itself, else the first include on the search path that has it."""

    def normal(line: str) -> str:
        return " ".join(line.replace("\\", " ").split())

    used: dict[str, int] = {}

    def matches(path: Path, wanted: str) -> list[int]:
        try:
            lines = text_of(path).splitlines()
        except (OSError, UnicodeDecodeError):
            return []
        found = []
        for index, raw in enumerate(lines, start=1):
            first = normal(raw)
            if not first.upper().startswith("FROM "):
                continue
            continued = raw.rstrip().endswith("\\")
            if first == wanted or (continued and wanted.startswith(first)):
                found.append(index)
        return found

    def locate(number: int, line: str) -> tuple[str, int]:
        wanted = normal(line)
        occurrence = used.get(wanted, 0)
        used[wanted] = occurrence + 1
        candidates = [source] + sorted(
            {p for d in search if d.is_dir() for p in d.iterdir() if p.is_file()} - {source})
        hits = [(path, index) for path in candidates for index in matches(path, wanted)]
        if hits:
            path, index = hits[min(occurrence, len(hits) - 1)]
            return str(path), index
        return f"{source} (preprocessed)", number

    return locate


def build_file_uses(project_dir: Path, builds_dir: Path, build_args: Mapping[str, str],
                    preprocess: Callable[[Path], str], search: list[Path]) -> list[ImageUse]:
    uses: list[ImageUse] = []
    for path in sorted(builds_dir.glob("*.in")):
        text = preprocess(path)
        locate = _locator(path, lambda p: p.read_text(encoding="utf-8"), [path.parent, *search])
        for use in from_uses(text, str(path), build_args, locate):
            uses.append(ImageUse(_relative(Path(use.file), project_dir), use.line, use.written,
                                 use.resolved, use.kind, True))
    return uses


def ci_files(project_dir: Path) -> list[Path]:
    files = [project_dir / ".gitlab-ci.yml"] if (project_dir / ".gitlab-ci.yml").exists() else []
    ci_dir = project_dir / "ci"
    if ci_dir.is_dir():
        files += sorted(p for p in ci_dir.rglob("*") if p.suffix in {".yml", ".yaml"})
    return files


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def lint_project(settings: Settings, *, config: str | Path | None = None) -> list[Finding]:
    """Lint the project's build files and CI YAML; raises :class:`LintFailed` on any error
    finding (warnings are returned and printed by the caller)."""
    from kiln.mirror.config import config_path, load_config
    from kiln.preprocess import default_include_path, preprocess_file

    project = settings.project_dir
    path = config_path(project, settings.mirror_config, config)
    variables = dict(os.environ)
    if settings.registry:
        variables["REGISTRY"] = settings.registry
    mirror_config = load_config(path, variables, require_destination=False) \
        if path.exists() or config is not None or settings.mirror_config is not None else None
    context = getattr(settings, "context_dir", None) or project
    includes = settings.includes_dir if settings.includes_dir.is_dir() else None
    search = list(default_include_path(context, includes))

    def preprocess(build_file: Path) -> str:
        return str(preprocess_file(build_file, search, None, strict=False).text)

    uses = build_file_uses(project, settings.builds_dir, settings.build_args, preprocess, search)
    for ci_file in ci_files(project):
        uses.extend(ci_uses(ci_file.read_text(encoding="utf-8"), _relative(ci_file, project)))
    own = [split_repository(settings.registry)[0]] if settings.registry else []
    if settings.ci.registry:
        own.append(settings.ci.registry)
    findings = check_uses(uses, mirror_config, own)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        raise LintFailed(
            f"{len(errors)} image reference(s) bypass the mirror:\n  "
            + "\n  ".join(str(f) for f in findings),
            hint=f"use the mirrored references above; mirror configuration: "
                 f"{_relative(path, project)}",
        )
    return findings


class LintFailed(InputError):
    """References that bypass the mirror (exit code 2: fix the files)."""
