"""What a credential looks like, and how to hide one: the leaf every masking and check uses.

Token shapes (GitLab ``glpat-``, GitHub ``ghp_``, AWS ``AKIA...``, a JWT, a PEM private key, a
password in a URL ...), words that make a *name* look like a credential's (``NPM_TOKEN``,
``apiKey``; ``DB_PASSWORD_FILE`` points to one and is not), a redacted :func:`preview`, and
:class:`Secret`, a string that hides itself in ``repr``. The console masks with these and
:mod:`kiln.credentials` refuses images with them, so both agree on what a credential is.

Imports nothing of kiln: anything may depend on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class Secret(str):
    """A string that never shows itself in ``repr``/f-string debugging output.

    ``str(secret)`` still yields the value (tools need it); ``repr`` is masked, so a settings
    object can be logged safely.
    """

    def __repr__(self) -> str:
        return "Secret('***')"


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
    """Whether ``name`` (an env var, build arg, label) is named like a credential."""
    return credential_word(name) is not None


@dataclass(frozen=True)
class TokenMatch:
    """One token shape found in a text: its kind and where it is (``text[start:end]``)."""

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


def article(kind: str) -> str:
    """``an AWS access key id`` / ``a GitLab token``: a token kind in a sentence."""
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
