"""Keeping credentials out of images: refuse them before a build, find them in a built image.

docs/includes.md: "Container images never contain secrets: no credentials in build args, ENV, labels
or layers." Build args are recorded in the image's history, ENV and LABEL values in its config:
anyone who can pull the image can read them. So kiln refuses, before anything is built:

* a build arg (``--build-arg``, ``build-args`` settings) whose *name* looks like a credential
  (``NPM_TOKEN``, ``DB_PASSWORD``, ``AWS_SECRET_ACCESS_KEY`` ...) and has a value, or whose
  *value* has the shape of a known token (GitLab ``glpat-``, GitHub ``ghp_``/``github_pat_``,
  AWS ``AKIA...``, a JWT, a PEM private key, Slack ``xox?-``, a URL with a password ...);
* in the preprocessed Containerfile, an ``ENV``/``LABEL`` with such a name and a value, an
  ``ARG`` with such a name and a default, and a token shape anywhere (a ``RUN curl -H "PRIVATE-
  TOKEN: glpat-..."`` lands in the image history too).

The fix is always the same: pass the credential as a build secret, which is mounted for one
``RUN`` step and never stored (``RUN --mount=type=secret,id=npm ...`` in the build file,
``build-secrets = ["id=npm,env=NPM_TOKEN"]`` for kiln, i.e. ``buildah build --secret``).

After a build (before the push) :func:`scan_config` looks at the image's config — ``Env``,
``Labels`` and every ``history[].created_by`` — for the same things, so a credential that slipped
in through a base image or a build arg kiln did not see still stops the push.

Everything here is pure (strings and dicts in, :class:`Finding` lists out) except the two small
adapters at the end that read an image config from local storage or from a registry. Findings
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
from typing import TYPE_CHECKING, Any

from kiln.errors import InputError

if TYPE_CHECKING:
    from kiln.buildah import Buildah
    from kiln.registry.client import RegistryClient

# -- what a credential looks like --------------------------------------------------------------

# Known token shapes: (kind, pattern). Patterns are specific enough not to match digests, paths
# or ordinary words.
TOKEN_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("GitLab token", re.compile(
        r"\bgl(?:pat|dt|rt|cbt|ptt|ft|imt|oas|soat|ffct|agent|wt)-[0-9A-Za-z_-]{20,}")),
    ("GitLab runner registration token", re.compile(r"\bGR1348941[0-9A-Za-z_-]{20,}")),
    ("GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}")),
    ("GitHub fine-grained token", re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,}")),
    ("AWS access key id", re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b")),
    ("JSON web token", re.compile(
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")),
    ("private key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")),
    ("Slack token", re.compile(r"\bxox[abposr]-[0-9A-Za-z-]{10,}")),
    ("Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("npm token", re.compile(r"\bnpm_[A-Za-z0-9]{36}\b")),
    ("PyPI token", re.compile(r"\bpypi-AgE[A-Za-z0-9_-]{50,}")),
    ("Stripe key", re.compile(r"\b[rs]k_live_[0-9A-Za-z]{20,}")),
    ("password in a URL", re.compile(
        r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@'\"]+:(?!\$\{?[A-Za-z_])[^/\s@'\"]+@[^\s/'\"]")),
)

_WORDS = frozenset({
    "token", "tokens", "password", "passwords", "passwd", "passphrase", "pwd", "secret",
    "secrets", "apikey", "apikeys", "credential", "credentials", "creds", "privatekey",
    "accesskey", "secretkey", "authtoken", "accesstoken", "pat",
})
_PAIRS = frozenset({
    ("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"), ("auth", "token"),
    ("client", "secret"), ("signing", "key"), ("encryption", "key"), ("session", "key"),
    ("deploy", "key"), ("ssh", "key"), ("master", "key"), ("app", "key"),
})
# A credential's *location*, not the credential: DB_PASSWORD_FILE=/run/secrets/db is fine.
_POINTER_WORDS = frozenset({"file", "path", "dir", "directory", "mount", "id", "name", "env",
                            "var", "enabled", "disabled", "required", "length", "min", "max"})


def name_words(name: str) -> list[str]:
    """``DB_PASSWORD`` -> ``[db, password]``; ``apiKey`` -> ``[api, key]`` (pure)."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]


def credential_word(name: str) -> str | None:
    """The word(s) that make ``name`` look like a credential's name, or ``None``."""
    words = name_words(name)
    if not words or words[-1] in _POINTER_WORDS:
        return None
    for first, second in zip(words, words[1:], strict=False):
        if (first, second) in _PAIRS:
            return f"{first}_{second}"
    for word in words:
        if word in _WORDS:
            return word
    return None


def looks_like_credential_name(name: str) -> bool:
    return credential_word(name) is not None


@dataclass(frozen=True)
class TokenMatch:
    kind: str
    start: int
    end: int


def find_tokens(text: str) -> list[TokenMatch]:
    """Every known token shape in ``text``, in order, without overlaps."""
    found: list[TokenMatch] = []
    for kind, pattern in TOKEN_PATTERNS:
        for match in pattern.finditer(text):
            if not any(m.start < match.end() and match.start() < m.end for m in found):
                found.append(TokenMatch(kind, match.start(), match.end()))
    return sorted(found, key=lambda m: m.start)


def redact_tokens(text: str, replacement: str = "[MASKED]") -> str:
    """``text`` with every known token shape replaced (used by the console's masking)."""
    matches = find_tokens(text)
    if not matches:
        return text
    out: list[str] = []
    pos = 0
    for m in matches:
        out.append(text[pos:m.start])
        if m.kind == "password in a URL":  # keep scheme://user: and @host, hide the password
            piece = text[m.start:m.end]
            head, _, rest = piece.partition("://")
            user, _, _ = rest.partition(":")
            out.append(f"{head}://{user}:{replacement}@{piece[-1]}")
        else:
            out.append(replacement)
        pos = m.end
    out.append(text[pos:])
    return "".join(out)


def _a(kind: str) -> str:
    return f"{'an' if kind[0].lower() in 'aeio' else 'a'} {kind}"


def preview(value: str, *, known_prefix: bool = False) -> str:
    """A redacted hint of a value, never enough to use it: its length, and for a known token
    shape its (public) prefix such as ``glpa``."""
    value = value.strip()
    if not value:
        return "empty"
    if known_prefix and len(value) >= 16:
        return f"{value[:4]}..., {len(value)} characters"
    return f"{len(value)} characters"


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
        findings.append(Finding(where, name, f"value is {_a(tokens[0].kind)}",
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


# -- the Containerfile -------------------------------------------------------------------------

def _instructions(text: str) -> list[tuple[int, str, str]]:
    """(first line, KEYWORD, arguments) per instruction; continuations joined, heredoc bodies
    kept as part of their instruction (they are text that ends up in the history too)."""
    result: list[tuple[int, str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i
        line = lines[i].rstrip()
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [line]
        while parts[-1].endswith("\\") and i < len(lines):
            parts[-1] = parts[-1][:-1]
            parts.append(lines[i])
            i += 1
        joined = " ".join(p.strip() for p in parts)
        for marker in re.findall(r"<<-?\s*[\"']?([A-Za-z_][A-Za-z0-9_]*)[\"']?", joined):
            body = []
            while i < len(lines) and lines[i].strip() != marker:
                body.append(lines[i])
                i += 1
            i += 1
            joined += "\n" + "\n".join(body)
        keyword, _, rest = joined.strip().partition(" ")
        result.append((start + 1, keyword.upper(), rest.strip()))
    return result


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


def check_containerfile(text: str, path: str, *, allow: Iterable[str] = (),
                        build_args: Mapping[str, str] | None = None) -> list[Finding]:
    """Findings in a preprocessed Containerfile (``path`` names it in messages, with lines).

    ``ENV``/``LABEL`` with a credential-looking name and a value, ``ARG`` with such a name and a
    default, and any known token shape on any line. An ``ARG NPM_TOKEN`` without a default is
    fine unless ``build_args`` gives it a value (those are checked by :func:`check_build_args`).
    """
    allow = tuple(allow)
    findings: list[Finding] = []
    for line, keyword, arguments in _instructions(text):
        where = f"{path}:{line} {keyword}"
        seen_token = False
        if keyword in {"ENV", "LABEL", "ARG"}:
            for name, value in _pairs(arguments, legacy=keyword == "ENV"):
                if keyword == "ARG" and not value:
                    continue
                found = check_value(where, name, value, allow=allow)
                seen_token = seen_token or any("value is" in f.reason for f in found)
                findings += found
        if not seen_token:
            for token in find_tokens(arguments):
                findings.append(Finding(where, "", f"contains {_a(token.kind)}",
                                        preview(arguments[token.start:token.end],
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
                step_findings.append(Finding(where, "", f"contains {_a(token.kind)}",
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


# -- the errors ------------------------------------------------------------------------------

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


def refuse(findings: Sequence[Finding], what: str) -> None:
    """Raise :class:`SecretInImage` listing ``findings`` (no-op when there are none)."""
    if not findings:
        return
    lines = "\n".join(f"  - {f}" for f in findings)
    raise SecretInImage(f"{what}: {len(findings)} credential-looking value(s):\n{lines}",
                        hint=SECRET_HINT)


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


# -- adapters (I/O) ----------------------------------------------------------------------------

def local_image_config(buildah: Buildah, ref: str) -> dict[str, Any]:
    """The OCI config of a local image, read with ``buildah inspect`` (never pulls)."""
    import json

    from kiln.errors import BuildError

    result = buildah.run("inspect", "--type", "image", ref, what="buildah inspect")
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise BuildError(f"buildah inspect {ref}: not JSON ({exc.msg})") from None
    config = data.get("OCIv1") or {}
    if not isinstance(config, dict):
        raise BuildError(f"buildah inspect {ref}: no OCIv1 config")
    return config


def registry_image_configs(client: RegistryClient, repository: str,
                           reference: str) -> list[tuple[str, dict[str, Any]]]:
    """(platform label, config) of ``repository:reference``; one per child of an index."""
    from kiln.registry import media

    manifest = client.get_manifest(repository, reference)
    where = f"{client.host}/{repository}:{reference}"
    manifests = [("", manifest)]
    if manifest.is_index:
        manifests = [(_platform_label(child.platform) or child.digest,
                      client.get_manifest(repository, child.digest))
                     for child in media.index_children(manifest.body)]
    configs = []
    for label, item in manifests:
        descriptor = media.config_descriptor(item.body, where)
        body = client.get_blob(repository, descriptor.digest)
        configs.append((label, media.parse_json(body, f"{where} config")))
    return configs


def _platform_label(platform: Mapping[str, Any] | None) -> str:
    if not platform:
        return ""
    parts = [str(platform.get("os", "")), str(platform.get("architecture", ""))]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(p for p in parts if p)


def scan_local_image(buildah: Buildah, ref: str, *, allow: Iterable[str] = ()) -> list[Finding]:
    return scan_config(local_image_config(buildah, ref), image=ref, allow=allow)


def scan_registry_image(client: RegistryClient, repository: str, reference: str, *,
                        allow: Iterable[str] = ()) -> list[Finding]:
    findings: list[Finding] = []
    name = f"{client.host}/{repository}:{reference}"
    for label, config in registry_image_configs(client, repository, reference):
        findings += scan_config(config, image=f"{name}{f' [{label}]' if label else ''}",
                                allow=allow)
    return findings


# -- the checks the build runs -------------------------------------------------------------------

def check_build_inputs(image: str, containerfile_text: str, containerfile: str,
                       build_args: Mapping[str, str], *, allow: Iterable[str] = ()) -> None:
    """Before a build: refuse credential-looking build args and Containerfile ENV/LABEL/ARG
    values or token shapes (:class:`SecretInImage`, exit code 2; nothing is built)."""
    allow = tuple(allow)
    findings = check_build_args(build_args, where=f"build arg of {image}", allow=allow)
    findings += check_containerfile(containerfile_text, containerfile, allow=allow)
    refuse(findings, f"refusing to build {image}")


def check_built_image(image: str, config: Mapping[str, Any], *, allow: Iterable[str] = ()
                      ) -> None:
    """After a build, before the push: refuse an image whose config carries a credential."""
    refuse(scan_config(config, image=image, allow=allow),
           f"refusing to push {image}: its config (Env, Labels, history) contains")
