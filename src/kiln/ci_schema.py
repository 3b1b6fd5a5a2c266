"""Check GitLab CI YAML against GitLab's own JSON schema, hidden templates included.

GitLab's schema (vendored in the ``check-jsonschema`` wheel) accepts *anything* under a hidden key
such as ``.publish`` ("arbitrary YAML anchor"), so a typo like ``scirpt:`` in a template would only
surface when a project extends it. Here every hidden key whose value is a mapping is also checked
against ``#/definitions/job_template``; hidden keys holding lists or scalars (anchors for rule
lists and the like) are left alone. A template is a part of a job, so a key it leaves to the job
that extends it (``environment.name`` of a stop template) is no problem there.

Jobs are checked the way GitLab checks them: after ``extends:`` is merged (:func:`merge_extends`,
GitLab's deep merge), so ``deploy-mr: {extends: .deploy_mr, environment: {on_stop: stop-mr}}``
has the environment name its template gives it. The templates come from the file, the files it
includes locally and the project's other CI files; a job whose template is not among them (a
``project:`` include) is checked for what it says itself, not for what it may lack.
``extends:`` targets are checked to exist across a file and the files it includes locally.
Problems come back with file, line and the key path (the job's own line for a key it inherits).

Used by the ``lint`` nox session (``python -m kiln.ci_schema``) and by the test suite.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from kiln.errors import InputError, ToolMissingError

SCHEMA_PACKAGE = "check_jsonschema.builtin_schemas.vendor"
SCHEMA_FILE = "gitlab-ci.json"
JOB_TEMPLATE_REF = "#/definitions/job_template"
# GitLab's own top-level keywords: never jobs, never templates.
_GLOBAL_KEYWORDS = frozenset(
    {"default", "include", "stages", "variables", "workflow", "image", "services", "cache",
     "before_script", "after_script", "spec", "pages"}
)


@dataclass(frozen=True)
class SchemaProblem:
    """One violation: where (file, line, key path) and what."""

    source: str
    line: int | None
    location: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.location or '<document>'}: {self.message}"


class _Loader(yaml.SafeLoader):
    """SafeLoader that understands GitLab's ``!reference [job, key]`` tag."""


def _construct_reference(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if not isinstance(node, yaml.SequenceNode):
        raise yaml.constructor.ConstructorError(
            None, None, "!reference needs a list such as [.job, script]", node.start_mark
        )
    return loader.construct_sequence(node, deep=True)


_Loader.add_constructor("!reference", _construct_reference)


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """GitLab's CI schema as shipped by check-jsonschema (a clear error if it is missing)."""
    try:
        text = resources.files(SCHEMA_PACKAGE).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise ToolMissingError(
            "GitLab CI JSON schema not found (it ships in the check-jsonschema wheel)",
            hint="pip install check-jsonschema  (or: pip install -e '.[test]')",
        ) from exc
    schema: dict[str, Any] = json.loads(text)
    return schema


def _validators() -> tuple[Any, Any]:
    try:
        jsonschema: Any = importlib.import_module("jsonschema")
    except ModuleNotFoundError as exc:  # pragma: no cover - comes with check-jsonschema
        raise ToolMissingError("jsonschema is not installed", hint="pip install check-jsonschema") from exc
    schema = load_schema()
    cls = jsonschema.validators.validator_for(schema)
    template_schema = {"definitions": schema["definitions"], "$ref": JOB_TEMPLATE_REF}
    return cls(schema), cls(template_schema)


def load_yaml(text: str, source: str = "<string>") -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Parse CI YAML; return the data and a map from key path to 1-based line number."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(f"{source}{line}: not valid YAML: {exc}") from exc
    if node is None:
        return None, {}
    loader = _Loader("")
    try:
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: {exc}") from exc
    lines: dict[tuple[Any, ...], int] = {}
    _index_lines(node, (), lines)
    return data, lines


def _index_lines(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            child = (*path, key)
            lines[child] = key_node.start_mark.line + 1
            _index_lines(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*path, index), lines)


def _location(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (("." if text else "") + str(part))
    return text


_UNEXPECTED = re.compile(r"\('([^']+)' (?:was|were) unexpected\)")


def _deepest(error: Any) -> Any:
    """The most specific sub-error of a oneOf/anyOf failure (jsonschema's own heuristic)."""
    best_match = importlib.import_module("jsonschema.exceptions").best_match

    while error.context:
        # Drop the branches of a oneOf/anyOf whose type does not even match (a mapping checked
        # against the "string" branch): the matching branch's complaint is the useful one.
        mismatched = {
            e.relative_schema_path[0] for e in error.context
            if e.validator == "type" and len(e.relative_schema_path) == 2 and not e.path
        }
        relevant = [e for e in error.context if e.relative_schema_path[0] not in mismatched]
        candidate = best_match(relevant or error.context)
        if candidate is None or candidate is error:
            break
        error = candidate
    return error


def _problem(source: str, base: tuple[Any, ...], error: Any,
             lines: Mapping[tuple[Any, ...], int]) -> SchemaProblem:
    return _as_problem(source, base, _deepest(error), lines)


def _error_path(base: tuple[Any, ...], error: Any) -> tuple[Any, ...]:
    path = (*base, *error.absolute_path)
    unexpected = _UNEXPECTED.search(error.message)
    return (*path, unexpected.group(1)) if unexpected else path


def _as_problem(source: str, base: tuple[Any, ...], error: Any,
                lines: Mapping[tuple[Any, ...], int]) -> SchemaProblem:
    path = _error_path(base, error)
    line = None
    for cut in range(len(path), -1, -1):
        if path[:cut] in lines:
            line = lines[path[:cut]]
            break
    message = error.message
    if len(message) > 300:
        message = message[:300] + " ..."
    return SchemaProblem(source, line, _location(path), message)


# GitLab resolves at most this many levels of extends.
MAX_EXTENDS_DEPTH = 11


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """GitLab's merge of ``extends``: mappings merge key by key, anything else (lists, scalars)
    is replaced by the later value."""
    result = dict(base)
    for key, value in over.items():
        current = result.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            result[key] = deep_merge(current, value)
        else:
            result[key] = value
    return result


def _extends_targets(body: Mapping[str, Any]) -> list[str]:
    targets = body.get("extends", [])
    if isinstance(targets, str):
        return [targets]
    return [t for t in targets if isinstance(t, str)] if isinstance(targets, list) else []


def merge_extends(definitions: Mapping[str, Any], name: str) -> tuple[dict[str, Any], bool]:
    """Job ``name`` as GitLab runs it: its ``extends:`` parents merged in order (each parent's
    own ``extends`` first, later parents win), the job's own keys last, ``extends`` dropped.
    The flag is False when a parent is missing from ``definitions`` (or the chain is deeper
    than GitLab allows, or loops): the result is then only part of the job."""

    def resolve(current: str, depth: int, chain: tuple[str, ...]) -> tuple[dict[str, Any], bool]:
        body = definitions.get(current)
        if not isinstance(body, Mapping) or depth > MAX_EXTENDS_DEPTH or current in chain:
            return {}, False
        merged: dict[str, Any] = {}
        complete = True
        for parent in _extends_targets(body):
            parent_body, parent_complete = resolve(parent, depth + 1, (*chain, current))
            merged = deep_merge(merged, parent_body)
            complete = complete and parent_complete
        own = {k: v for k, v in body.items() if k != "extends"}
        return deep_merge(merged, own), complete

    return resolve(name, 0, ())


def _is_job(key: Any, value: Any) -> bool:
    return (isinstance(key, str) and not key.startswith(".") and key not in _GLOBAL_KEYWORDS
            and isinstance(value, Mapping))


def validate_data(data: Any, source: str = "<string>",
                  lines: Mapping[tuple[Any, ...], int] | None = None,
                  definitions: Mapping[str, Any] | None = None) -> list[SchemaProblem]:
    """Problems of one parsed CI document (whole-file schema with every job's ``extends``
    merged, then each hidden template). ``definitions``: the templates and jobs of the files
    this one is used with (its local includes); the document's own win."""
    lines = lines or {}
    if data is None:
        return [SchemaProblem(source, 1, "", "empty file: nothing for GitLab to run")]
    document_validator, template_validator = _validators()
    partial: set[str] = set()     # jobs whose extends chain could not be followed to its end
    merged: set[str] = set()      # jobs with extends, checked merged
    document = data
    if isinstance(data, Mapping):
        known = {**(definitions or {}), **data}
        document = dict(data)
        for key, value in data.items():
            if _is_job(key, value) and "extends" in value:
                document[key], complete = merge_extends(known, key)
                merged.add(key)
                if not complete:
                    partial.add(key)
    problems = []
    for error in sorted(document_validator.iter_errors(document), key=lambda e: list(e.path)):
        deepest = _deepest(error)
        path = _error_path((), deepest)
        job = path[0] if path else None
        if deepest.validator == "required":
            if job in partial:
                continue  # a key the unseen template may give
        elif (job in merged and len(path) > 1 and isinstance(data[job], Mapping)
              and path[1] not in data[job]):
            continue  # inherited as it is: reported where the template writes it
        problems.append(_as_problem(source, (), deepest, lines))
    if isinstance(data, Mapping):
        for key, value in data.items():
            if isinstance(key, str) and key.startswith(".") and isinstance(value, Mapping):
                for error in template_validator.iter_errors(value):
                    deepest = _deepest(error)
                    if deepest.validator == "required":
                        continue  # a template is part of a job: the job gives the rest
                    problems.append(_as_problem(source, (key,), deepest, lines))
    return problems


def check_needs(data: Any, source: str = "<string>",
                lines: Mapping[tuple[Any, ...], int] | None = None) -> list[SchemaProblem]:
    """``needs:`` that GitLab would refuse although the schema accepts them: a job that needs
    itself, a job this document does not define (``needs`` of another pipeline or project
    excepted), or a cycle. For self-contained documents such as a generated child pipeline;
    a file whose jobs come from includes is not checked here."""
    lines = lines or {}
    if not isinstance(data, Mapping):
        return []
    jobs = {key: value for key, value in data.items()
            if isinstance(key, str) and not key.startswith(".") and key not in _GLOBAL_KEYWORDS
            and isinstance(value, Mapping)}
    problems: list[SchemaProblem] = []
    graph: dict[str, list[str]] = {}
    for name, body in jobs.items():
        needs = body.get("needs") or []
        graph[name] = []
        for index, item in enumerate(needs if isinstance(needs, list) else []):
            if isinstance(item, Mapping):
                if "pipeline" in item or "project" in item:
                    continue
                target = item.get("job")
            else:
                target = item
            where = (name, "needs", index)
            if target == name:
                problems.append(SchemaProblem(source, lines.get(where), _location(where),
                                              f"job {name!r} needs itself"))
            elif target not in jobs:
                problems.append(SchemaProblem(source, lines.get(where), _location(where),
                                              f"needs {target!r}, which this file does not "
                                              "define as a job"))
            else:
                graph[name].append(str(target))
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for child in graph.get(name, []):
            if state.get(child) == 1:
                return [*path[path.index(child):], child] if child in path else [name, child]
            if not state.get(child):
                found = visit(child, [*path, child])
                if found:
                    return found
        state[name] = 2
        return None

    for name in graph:
        if not state.get(name):
            cycle = visit(name, [name])
            if cycle:
                problems.append(SchemaProblem(source, lines.get((name, "needs")),
                                              f"{name}.needs",
                                              f"needs form a cycle: {' -> '.join(cycle)}"))
                break
    return problems


def validate_text(text: str, source: str = "<string>",
                  definitions: Mapping[str, Any] | None = None) -> list[SchemaProblem]:
    """Problems of CI YAML given as text (``definitions``: see :func:`validate_data`)."""
    data, lines = load_yaml(text, source)
    return validate_data(data, source, lines, definitions)


def validate_file(path: Path, definitions: Mapping[str, Any] | None = None) -> list[SchemaProblem]:
    """Problems of one CI YAML file."""
    return validate_text(path.read_text(encoding="utf-8"), str(path), definitions)


def local_includes(data: Any) -> list[str]:
    """The ``include: local`` paths (and bare-string includes) of a CI document."""
    include = data.get("include") if isinstance(data, Mapping) else None
    items = include if isinstance(include, list) else [include] if include else []
    result: list[str] = []
    for item in items:
        if isinstance(item, str) and "://" not in item:
            result.append(item)
        elif isinstance(item, Mapping) and isinstance(item.get("local"), str):
            result.append(item["local"])
    return result


def check_extends(path: Path, project_dir: Path) -> list[SchemaProblem]:
    """Every ``extends:`` target of ``path`` (and of its local includes) is defined somewhere."""
    documents: dict[Path, tuple[Any, dict[tuple[Any, ...], int]]] = {}
    pending = [path]
    problems: list[SchemaProblem] = []
    while pending:
        current = pending.pop()
        if current in documents:
            continue
        if not current.is_file():
            problems.append(SchemaProblem(str(path), None, "include", f"local include {current} not found"))
            continue
        documents[current] = load_yaml(current.read_text(encoding="utf-8"), str(current))
        for include in local_includes(documents[current][0]):
            pending.append(project_dir / include.lstrip("/"))
    defined = {
        key for data, _ in documents.values() if isinstance(data, Mapping) for key in data
    }
    for current, (data, lines) in documents.items():
        if not isinstance(data, Mapping):
            continue
        for job, body in data.items():
            if not isinstance(body, Mapping) or job in _GLOBAL_KEYWORDS:
                continue
            targets = body.get("extends", [])
            for target in [targets] if isinstance(targets, str) else targets:
                if target not in defined:
                    problems.append(SchemaProblem(
                        str(current), lines.get((job, "extends")), f"{job}.extends",
                        f"extends {target!r}, which is defined in none of "
                        f"{', '.join(sorted(str(p.relative_to(project_dir)) for p in documents))}",
                    ))
    return problems


def ci_yaml_files(project_dir: Path) -> list[Path]:
    """The CI YAML of a project: ``.gitlab-ci.yml`` and every ``*.yml``/``*.yaml`` under ``ci/``."""
    files = []
    main = project_dir / ".gitlab-ci.yml"
    if main.is_file():
        files.append(main)
    ci_dir = project_dir / "ci"
    if ci_dir.is_dir():
        files.extend(sorted(p for p in ci_dir.rglob("*") if p.suffix in {".yml", ".yaml"}))
    return files


def _included_files(path: Path, project_dir: Path) -> list[Path]:
    """``path`` and the files it includes locally, recursively (includes first)."""
    order: list[Path] = []
    pending = [path]
    seen: set[Path] = set()
    while pending:
        current = pending.pop()
        if current in seen or not current.is_file():
            continue
        seen.add(current)
        order.append(current)
        try:
            data, _ = load_yaml(current.read_text(encoding="utf-8"), str(current))
        except InputError:
            continue
        pending.extend(project_dir / include.lstrip("/") for include in local_includes(data))
    return order[::-1]


def project_definitions(project_dir: Path, files: Sequence[Path] = ()) -> dict[str, Any]:
    """Every top-level key (templates and jobs) of the project's CI YAML: ``files``, then the
    main ``.gitlab-ci.yml`` with its local includes (the main file's keys win, as in GitLab).
    Files that do not parse add nothing (their own check reports them)."""
    definitions: dict[str, Any] = {}
    main = project_dir / ".gitlab-ci.yml"
    for path in [*files, *(_included_files(main, project_dir) if main.is_file() else [])]:
        try:
            data, _ = load_yaml(path.read_text(encoding="utf-8"), str(path))
        except (InputError, OSError):
            continue
        if isinstance(data, Mapping):
            definitions.update(data)
    return definitions


def check_project(project_dir: Path, files: Sequence[Path] | None = None) -> list[SchemaProblem]:
    """Schema problems of every CI YAML file of a project (jobs with their ``extends`` merged
    across the project's files), plus dangling ``extends``."""
    targets = list(files) if files else ci_yaml_files(project_dir)
    definitions = project_definitions(project_dir, targets)
    problems: list[SchemaProblem] = []
    for path in targets:
        try:
            problems.extend(validate_file(path, definitions))
        except InputError as exc:
            problems.append(SchemaProblem(str(path), None, "", exc.message))
    main = project_dir / ".gitlab-ci.yml"
    if main in targets or not files:
        if main.is_file():
            try:
                problems.extend(check_extends(main, project_dir))
            except InputError as exc:
                problems.append(SchemaProblem(str(main), None, "", exc.message))
    return problems


def _iter_report(problems: Sequence[SchemaProblem], files: Sequence[Path]) -> Iterator[str]:
    for problem in problems:
        yield f"error: {problem}"
    if problems:
        yield f"{len(problems)} problem(s) in GitLab CI YAML (schema: check-jsonschema's {SCHEMA_FILE})"
    else:
        yield f"GitLab CI YAML valid: {', '.join(str(f) for f in files) or 'no files found'}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kiln.ci_schema [FILE...]``: exit 1 when any file has a problem."""
    args = list(sys.argv[1:] if argv is None else argv)
    project_dir = Path.cwd()
    files = [Path(a) for a in args] if args else ci_yaml_files(project_dir)
    try:
        problems = check_project(project_dir, files if args else None)
    except (ToolMissingError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    stream = sys.stderr if problems else sys.stdout
    for line in _iter_report(problems, files):
        print(line, file=stream)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
