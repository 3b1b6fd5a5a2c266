"""Registry credentials and the authentication handshake's pure parts (no I/O, no console):
auth-file data in and out, ``WWW-Authenticate`` challenges, token scopes.

Where credentials come from, first match wins: explicit settings (``CI_REGISTRY_USER`` /
``CI_REGISTRY_PASSWORD``, for the CI registry's host), then the containers/docker auth files
(``REGISTRY_AUTH_FILE``, ``${XDG_RUNTIME_DIR}/containers/auth.json``,
``~/.config/containers/auth.json``, ``~/.docker/config.json``) — the same files skopeo,
buildah and docker read. Passwords are :class:`~kiln.redact.Secret` values, never part of any
``repr`` or error message; :mod:`kiln.registry.access` registers them with the console's masking
when it looks them up.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import ConfigError
from kiln.redact import Secret
from kiln.registry.reference import DOCKER_HUB, is_docker_hub

# The user name docker and the containers tools use with an identity token.
IDENTITY_TOKEN_USER = "<token>"


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or token) for one registry."""

    username: str
    password: Secret = field(repr=False)
    source: str = "settings"

    def __post_init__(self) -> None:
        if not isinstance(self.password, Secret):
            object.__setattr__(self, "password", Secret(str(self.password)))

    @property
    def is_identity_token(self) -> bool:
        """An auth file's ``identitytoken`` (an OAuth refresh token, not a password)."""
        return self.username == IDENTITY_TOKEN_USER

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***, source={self.source!r})"


def default_auth_files(env: Mapping[str, str]) -> list[Path]:
    """The auth files to try, in the order containers tools use."""
    files: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    home = Path(env.get("HOME") or Path.home())
    files.append(home / ".config" / "containers" / "auth.json")
    docker_config = env.get("DOCKER_CONFIG")
    files.append(Path(docker_config) / "config.json" if docker_config
                 else home / ".docker" / "config.json")
    return files


def _normalise_key(key: str) -> str:
    """An auth-file key reduced to ``host[/path]`` (docker writes ``https://host/v1/``)."""
    text = key.strip()
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme):]
    text = text.rstrip("/")
    if text.endswith("/v1") or text.endswith("/v2"):
        text = text[:-3]
    return DOCKER_HUB if is_docker_hub(text) else text


def credentials_from_auth_data(data: Mapping[str, object], host: str, repository: str = "",
                               source: str = "auth file") -> Credentials | None:
    """Find credentials for ``host``/``repository`` in a parsed auth file (most specific key wins).

    containers auth files may key by ``host/namespace/repo``; docker's by host or URL.
    """
    auths = data.get("auths")
    if not isinstance(auths, Mapping):
        return None
    host = DOCKER_HUB if is_docker_hub(host) else host
    wanted = f"{host}/{repository}".rstrip("/")
    best: tuple[int, Mapping[str, object]] | None = None
    for key, entry in auths.items():
        if not isinstance(entry, Mapping):
            continue
        norm = _normalise_key(str(key))
        if norm == wanted or wanted.startswith(norm + "/") or norm == host:
            if best is None or len(norm) > best[0]:
                best = (len(norm), entry)
    if best is None:
        return None
    entry = best[1]
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: the 'auth' entry for {host} is not base64 user:password",
                              hint="log in again (skopeo login / buildah login)") from exc
        user, sep, password = decoded.partition(":")
        if not sep:
            raise ConfigError(f"{source}: the 'auth' entry for {host} has no ':' separator")
        return Credentials(user, Secret(password), source)
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credentials(str(entry["username"]), Secret(str(entry["password"])), source)
    if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
        return Credentials(IDENTITY_TOKEN_USER, Secret(str(entry["identitytoken"])), source)
    return None


def auth_file_entry(credentials: Credentials) -> dict[str, str]:
    """The ``auths`` entry a containers auth file holds for ``credentials``: ``identitytoken``
    for an identity token (never sent as a Basic password), else base64 ``auth``."""
    if credentials.is_identity_token:
        return {"identitytoken": str(credentials.password)}
    raw = f"{credentials.username}:{credentials.password}".encode()
    return {"auth": base64.b64encode(raw).decode()}


def auth_file_data(entries: Mapping[str, Credentials],
                   base: Mapping[str, object] | None = None) -> dict[str, object]:
    """A containers auth file: ``base`` (an existing file's data) with ``entries`` per host."""
    data: dict[str, object] = dict(base or {})
    existing = data.get("auths")
    auths: dict[str, object] = dict(existing) if isinstance(existing, Mapping) else {}
    for host in sorted(entries):
        auths[host] = auth_file_entry(entries[host])
    data["auths"] = auths
    return data


# -- WWW-Authenticate ------------------------------------------------------------------------

@dataclass(frozen=True)
class Challenge:
    """One parsed ``WWW-Authenticate`` challenge."""

    scheme: str  # lowercase: "bearer" or "basic"
    params: Mapping[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scope(self) -> str | None:
        return self.params.get("scope")


_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenge(header: str) -> Challenge | None:
    """Parse ``Bearer realm="...",service="...",scope="..."`` (or ``Basic realm=...``)."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if not match or match.end() == pos:
            break
        value = match[2] if match[2] is not None else (match[3] or "")
        params[match[1].lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = match.end()
    return Challenge(scheme.lower(), params)


ACTIONS_ORDER = ("pull", "push", "delete")


def scope_for(repository: str, actions: frozenset[str]) -> str:
    """The token scope string, actions in a stable order (``repository:x:pull,push``)."""
    ordered = [a for a in ACTIONS_ORDER if a in actions] + sorted(actions - set(ACTIONS_ORDER))
    return f"repository:{repository}:{','.join(ordered)}"


def actions_for(method: str) -> frozenset[str]:
    """The token actions an HTTP method needs on a repository (as distribution checks them)."""
    if method in {"GET", "HEAD"}:
        return frozenset({"pull"})
    if method == "DELETE":
        return frozenset({"delete"})
    return frozenset({"pull", "push"})
