"""Keeping credentials out of images: refuse them before a build, find them in a built image.

Build args are recorded in the image's history, ENV and LABEL values in its config: anyone who
can pull the image can read them (see docs/includes.md). So kiln refuses, before
anything is built:

* a build arg (``--build-arg``, ``build-args`` settings) or a label kiln sets whose *name* looks
  like a credential (``NPM_TOKEN``, ``DB_PASSWORD``, ``AWS_SECRET_ACCESS_KEY`` ...) and has a
  value, or whose *value* has the shape of a known token (:mod:`kiln.redact`);
* in the preprocessed Containerfile, an ``ENV``/``LABEL`` with such a name and a value, an
  ``ARG`` with such a name and a default, and a token shape anywhere, heredoc bodies included (a
  ``RUN curl -H "PRIVATE-TOKEN: glpat-..."`` or a ``RUN <<EOF`` body lands in the history too).
  The Containerfile is read by :mod:`kiln.containerfile`, the reader build and lint use.

The fix is always the same: pass the credential as a build secret, which is mounted for one
``RUN`` step and never stored (``RUN --mount=type=secret,id=npm ...`` in the build file,
``build-secrets = ["id=npm,env=NPM_TOKEN"]`` for kiln, i.e. ``buildah build --secret``).

After a build (before the push) :func:`check_built_image` looks at the image's config —
``Env``, ``Labels`` and every ``history[].created_by`` — for the same things, so a credential
that slipped in through a base image or a build arg kiln did not see still stops the push.

Everything here is pure (strings and dicts in, :class:`Finding` lists or a refusal out); reading
a config is the adapters' job (``Buildah.inspect_config``, :mod:`kiln.image_scan`). Findings
never contain the secret itself: only its name, its kind and a redacted preview.

Names are split into words (``_``, ``-``, ``.``, camelCase), so ``TOKENIZER_MODEL`` or
``PASSWORDLESS_LOGIN_URL`` are not credentials but ``GITLAB_TOKEN`` and ``apiKey`` are. A name
ending in ``_FILE``/``_PATH``/``_DIR`` points to a credential (the Docker ``*_FILE`` convention)
and is allowed; ``secret-allow`` in ``[tool.kiln]`` lists further names to accept.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kiln.containerfile import instructions
from kiln.errors import InputError
from kiln.redact import article, credential_word, find_tokens, preview

# -- findings ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    """One credential-looking thing: where it is, under which name, and why it looks like one."""

    where: str     # "build arg", "Containerfile /x/Containerfile:3", "image config Env" ...
    name: str      # the arg/ENV/label name, or "" for a token found in free text
    reason: str    # "name contains 'token'" / "value is a GitLab token"
    hint_value: str = ""  # redacted preview

    def __str__(self) -> str:
        what = f"{self.name!r} " if self.name else ""
        value = f" [value: {self.hint_value}]" if self.hint_value else ""
        return f"{self.where}: {what}{self.reason}{value}"


def check_value(where: str, name: str, value: str, *,
                allow: Iterable[str] = ()) -> list[Finding]:
    """Findings for one ``name=value`` (a build arg, ENV, LABEL or ARG default)."""
    allowed = {a.upper() for a in allow}
    findings: list[Finding] = []
    tokens = find_tokens(value)
    if tokens:
        findings.append(Finding(where, name, f"value is {article(tokens[0].kind)}",
                                preview(value[tokens[0].start:tokens[0].end],
                                        known_prefix=True)))
    elif name.upper() not in allowed and value.strip() != "":
        word = credential_word(name)
        if word is not None:
            findings.append(Finding(where, name, f"name looks like a credential ('{word}') and "
                                    "it has a value", preview(value)))
    return findings


def check_build_args(args: Mapping[str, str], *, where: str = "build arg",
                     allow: Iterable[str] = ()) -> list[Finding]:
    """Build args kiln would pass (``--build-arg NAME=value``): recorded in the image history."""
    findings: list[Finding] = []
    for name, value in args.items():
        findings += check_value(where, name, value, allow=allow)
    return findings


def _pairs(arguments: str, *, legacy: bool) -> list[tuple[str, str]]:
    """``K=v K2="v 2"`` (or the legacy ``ENV K some value`` form) as (name, value) pairs."""
    try:
        words = shlex.split(arguments, posix=True)
    except ValueError:
        words = arguments.split()
    if not words:
        return []
    if legacy and "=" not in words[0]:
        name, _, value = arguments.partition(" ")
        return [(name, value.strip().strip("\"'"))]
    pairs = []
    for word in words:
        name, eq, value = word.partition("=")
        pairs.append((name, value if eq else ""))
    return pairs


def source_line(line: str, needles: Sequence[str], sources: Mapping[str, str]) -> str | None:
    """Where a Containerfile line came from, as ``file:line`` of ``sources`` (name -> text, the
    build file first, then its includes): the first source line equal to it, else the first
    one that contains every needle (the token, or the ENV/LABEL/ARG name). ``None`` when no
    source line matches (a macro expansion built it). The preprocessor keeps no line origins;
    text matching is enough for what a credential refusal points at."""
    wanted = line.strip()
    for match_whole in (True, False):
        for name, source in sources.items():
            for number, candidate in enumerate(source.splitlines(), start=1):
                text = candidate.strip()
                if (text == wanted if match_whole
                        else needles and all(n in candidate for n in needles)):
                    return f"{name}:{number}"
    return None


def check_containerfile(text: str, path: str, *, allow: Iterable[str] = (),
                        sources: Mapping[str, str] | None = None) -> list[Finding]:
    """Findings in a preprocessed Containerfile (``path`` names it in messages, with lines).

    ``ENV``/``LABEL`` with a credential-looking name and a value, ``ARG`` with such a name and a
    default, and any known token shape in any instruction or heredoc body. An ``ARG NPM_TOKEN``
    without a default is fine (build args are checked by :func:`check_build_args`). With
    ``sources`` (the build file and includes, name -> text) each finding also names the source
    line it came from (:func:`source_line`), the line to fix.
    """
    allow = tuple(allow)
    findings: list[Finding] = []
    lines = text.splitlines()
    for instruction in instructions(text):
        keyword = instruction.keyword
        where = f"{path}:{instruction.line} {keyword}"
        if sources:
            first = lines[instruction.line - 1] if 0 < instruction.line <= len(lines) else ""
            needles = [instruction.arguments[m.start:m.end]
                       for m in find_tokens(instruction.arguments)] or [
                name for name, _ in _pairs(instruction.arguments, legacy=keyword == "ENV")[:1]]
            origin = source_line(first, needles, sources)
            if origin is not None:
                where = f"{origin} (Containerfile {path}:{instruction.line}) {keyword}"
        seen_token = False
        if keyword in {"ENV", "LABEL", "ARG"}:
            for name, value in _pairs(instruction.arguments, legacy=keyword == "ENV"):
                if keyword == "ARG" and not value:
                    continue
                found = check_value(where, name, value, allow=allow)
                seen_token = seen_token or any("value is" in f.reason for f in found)
                findings += found
        if not seen_token:
            # heredoc bodies too: their text is stored in the image history
            checked = "\n".join([instruction.arguments,
                                  *(h.body for h in instruction.heredocs)])
            for token in find_tokens(checked):
                findings.append(Finding(where, "", f"contains {article(token.kind)}",
                                        preview(checked[token.start:token.end],
                                                known_prefix=True)))
    return findings


# -- a built image's config ---------------------------------------------------------------------

_RUN_ARGS = re.compile(r"^\|(\d+)\s+(.*)$", re.DOTALL)


def _history_args(created_by: str) -> list[tuple[str, str]]:
    """The build args buildah/docker record before a RUN: ``|2 A=x B=y /bin/sh -c ...``."""
    match = _RUN_ARGS.match(created_by.strip())
    if not match:
        return []
    count = int(match[1])
    try:
        words = shlex.split(match[2], posix=True)
    except ValueError:
        words = match[2].split()
    pairs = []
    for word in words[:count]:
        name, eq, value = word.partition("=")
        if eq:
            pairs.append((name, value))
    return pairs


def _nop_pairs(created_by: str) -> tuple[str, list[tuple[str, str]]]:
    """``/bin/sh -c #(nop) ENV A=b`` -> ("ENV", [(A, b)]) (also LABEL/ARG); else ("", [])."""
    match = re.search(r"#\(nop\)\s+(ENV|LABEL|ARG)\s+(.*)$", created_by, re.DOTALL)
    if not match:
        return "", []
    return match[1], _pairs(match[2], legacy=match[1] == "ENV")


def scan_config(config: Mapping[str, Any], *, image: str = "image",
                allow: Iterable[str] = ()) -> list[Finding]:
    """Findings in an image config (OCI or Docker JSON): ``config.Env``, ``config.Labels`` and
    ``history[].created_by`` (build args of RUN steps, ``#(nop) ENV/LABEL``, token shapes)."""
    allow = tuple(allow)
    findings: list[Finding] = []
    inner = config.get("config") or config.get("container_config") or {}
    if not isinstance(inner, Mapping):
        inner = {}
    env = inner.get("Env") or []
    for item in env if isinstance(env, list) else []:
        name, _, value = str(item).partition("=")
        findings += check_value(f"{image} config Env", name, value, allow=allow)
    labels = inner.get("Labels") or {}
    if isinstance(labels, Mapping):
        for name, value in labels.items():
            findings += check_value(f"{image} config Labels", str(name), str(value), allow=allow)
    history = config.get("history") or []
    for number, entry in enumerate(history if isinstance(history, list) else [], start=1):
        if not isinstance(entry, Mapping):
            continue
        created_by = str(entry.get("created_by") or "")
        if not created_by:
            continue
        where = f"{image} history step {number}"
        step_findings: list[Finding] = []
        for name, value in _history_args(created_by):
            step_findings += check_value(f"{where} (build arg of a RUN step)", name, value,
                                         allow=allow)
        keyword, pairs = _nop_pairs(created_by)
        for name, value in pairs:
            if keyword == "ARG" and not value:
                continue
            step_findings += check_value(f"{where} ({keyword})", name, value, allow=allow)
        if not any("value is" in f.reason for f in step_findings):
            for token in find_tokens(created_by):
                step_findings.append(Finding(where, "", f"contains {article(token.kind)}",
                                             preview(created_by[token.start:token.end],
                                                     known_prefix=True)))
        findings += step_findings
    return _dedupe(findings)


def _dedupe(findings: Sequence[Finding]) -> list[Finding]:
    """ENV/LABEL appear in both the config and the history: report each (name, reason) once."""
    seen: set[tuple[str, str]] = set()
    result: list[Finding] = []
    for finding in findings:
        key = (finding.name, finding.reason) if finding.name else (finding.where, finding.reason)
        if key not in seen:
            seen.add(key)
            result.append(finding)
    return result


# -- the errors ---------------------------------------------------------------------------------

SECRET_HINT = (
    "never put credentials into build args, ENV or LABEL (they are stored in the image and its "
    "history): mount them for one step instead - in the build file "
    "'RUN --mount=type=secret,id=npm NPM_TOKEN=$(cat /run/secrets/npm) npm ci', and for kiln "
    "build-secrets = [\"id=npm,env=NPM_TOKEN\"] in [tool.kiln] (or KILN_BUILD_SECRETS), which "
    "becomes 'buildah build --secret id=npm,env=NPM_TOKEN'. A false alarm? list the name in "
    "secret-allow in [tool.kiln]"
)


class SecretInImage(InputError):
    """A credential would be (or was) stored in an image: nothing is built / pushed."""


def _listing(findings: Sequence[Finding]) -> str:
    lines = "\n".join(f"  - {f}" for f in findings)
    return f"{len(findings)} credential-looking value(s):\n{lines}"


def refuse(findings: Sequence[Finding], what: str, *, hint_prefix: str = "") -> None:
    """Raise :class:`SecretInImage` listing ``findings`` (no-op when there are none)."""
    if findings:
        raise SecretInImage(f"{what}: {_listing(findings)}", hint=hint_prefix + SECRET_HINT)


# -- the checks the build runs -------------------------------------------------------------------

def check_build_inputs(image: str, containerfile_text: str, containerfile: str,
                       build_args: Mapping[str, str], *, labels: Mapping[str, str] | None = None,
                       allow: Iterable[str] = (), build_file: str | None = None,
                       sources: Mapping[str, str] | None = None) -> None:
    """Before a build: refuse credential-looking build args, labels kiln sets, and Containerfile
    ENV/LABEL/ARG values or token shapes (:class:`SecretInImage`, exit code 2; nothing is
    built). ``build_file`` (``builds/<image>.in``) is named in the message; with ``sources``
    (name -> text of the build file and its includes) each Containerfile finding points at its
    source line (:func:`source_line`)."""
    allow = tuple(allow)
    findings = check_build_args(build_args, where=f"build arg of {image}", allow=allow)
    findings += check_build_args(labels or {}, where="label kiln sets", allow=allow)
    findings += check_containerfile(containerfile_text, containerfile, allow=allow,
                                    sources=sources)
    source = f" ({build_file})" if build_file else ""
    refuse(findings, f"refusing to build {image}{source}; nothing was built or pushed")


def check_built_image(image: str, config: Mapping[str, Any], *, allow: Iterable[str] = (),
                      hint_prefix: str = "") -> None:
    """After a build, before the push: refuse an image whose config (Env, Labels, history)
    carries a credential (:class:`SecretInImage`)."""
    findings = scan_config(config, image=image, allow=allow)
    if findings:
        raise SecretInImage(f"refusing to push {image}: its config carries {_listing(findings)}",
                            hint=hint_prefix + SECRET_HINT)


# -- build secrets (the alternative we point to) ----------------------------------------------

_SECRET_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_build_secret(spec: str) -> dict[str, str]:
    """Validate one ``id=npm,env=NPM_TOKEN`` / ``id=pip,src=/path`` entry (buildah --secret)."""
    fields: dict[str, str] = {}
    for part in spec.split(","):
        key, eq, value = part.strip().partition("=")
        if not eq or key not in {"id", "src", "env", "type"}:
            raise InputError(f"build secret {spec!r}: expected id=NAME,env=VARIABLE or "
                             "id=NAME,src=FILE", hint="e.g. id=npm,env=NPM_TOKEN")
        fields[key] = value
    if not _SECRET_ID.match(fields.get("id", "")):
        raise InputError(f"build secret {spec!r}: 'id' must be letters, digits, '.', '_', '-'")
    if ("src" in fields) == ("env" in fields):
        raise InputError(f"build secret {spec!r}: give exactly one of src=FILE or env=VARIABLE")
    return fields
