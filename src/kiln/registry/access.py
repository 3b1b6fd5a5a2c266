"""How kiln reaches a registry: which one, over HTTP or TLS, with which credentials.

Every caller that talks to a registry (the HTTP client, buildah pushes and pulls, skopeo copies
for promote, mirror and seed) asks here, so the answers cannot drift apart:

* **Which registry** (:func:`target_registry`): the configured registry (``KILN_REGISTRY``, or
  ``CI_REGISTRY_IMAGE`` in CI); in CI without one, a configuration error; otherwise the embedded
  local registry, started only when it will be used (never in a dry run).
* **Clients** are built from settings by :meth:`kiln.registry.client.RegistryClient.from_settings`
  with the answers below.
* **Plain HTTP or TLS** (:func:`is_loopback`, :func:`plain_http`, :func:`tls_verify`): loopback
  registries (all of 127.0.0.0/8, ``localhost``, ``::1``) speak plain HTTP unless
  ``loopback_tls`` says otherwise; other registries verify TLS unless ``tls_verify`` is off.
* **Credentials** (:func:`credentials_for`): the settings' user/password for our own registry
  hosts only, else the containers/docker auth files; every secret found is registered with the
  console's masking.
* **Credentials and CA for tools** (:func:`tool_access`): the one writer of temporary auth files
  (mode 0600 in a 0700 folder, ``auth`` or ``identitytoken`` entries) and cert dirs; removed
  afterwards, whatever happens. See ``docs/registry-operations.md``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kiln import console
from kiln.errors import ConfigError
from kiln.local_registry import local_registry_status, start_local_registry
from kiln.redact import Secret
from kiln.registry.auth import (
    Credentials,
    auth_file_data,
    auth_file_entry,
    credentials_from_auth_data,
    default_auth_files,
)
from kiln.registry.reference import split_repository
from kiln.settings import Settings

# What a dry run's plan shows instead of the temporary files a real run writes.
PLANNED_AUTH_FILE = Path("<temporary auth file, mode 0600>")
PLANNED_CERT_DIR = Path("<temporary cert dir>")

# -- hosts, loopback, TLS (pure) ---------------------------------------------------------------


def registry_host(registry: str) -> str:
    """The host part of a registry or repository prefix (``registry.gitlab.com/group/x`` ->
    ``registry.gitlab.com``; ``127.0.0.1:5000/mirror`` -> ``127.0.0.1:5000``)."""
    return registry.split("/", 1)[0]


def _host_without_port(host: str) -> str:
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.rsplit(":", 1)[0]
    return host  # a bare IPv6 address (``::1``) or a name without port


def is_loopback(registry: str) -> bool:
    """Whether ``registry`` (a host, ``host:port`` or a repository prefix) is on this machine:
    ``localhost`` and every loopback address (127.0.0.0/8, ``::1``, ``[::1]``), any port."""
    name = _host_without_port(registry_host(registry))
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def plain_http(settings: Settings, registry: str) -> bool:
    """Loopback registries speak plain HTTP (the embedded and test registries) unless
    ``loopback_tls`` says they have TLS."""
    return is_loopback(registry) and not settings.loopback_tls


def tls_verify(settings: Settings, registry: str) -> bool:
    """A tool's ``--tls-verify`` for ``registry``: off for plain HTTP or when the setting is."""
    return settings.tls_verify and not plain_http(settings, registry)


def own_registry_hosts(settings: Settings) -> set[str]:
    """The hosts the settings' user/password belong to: the CI registry and our registry."""
    hosts = {settings.ci.registry} if settings.ci.registry else set()
    if settings.registry:
        hosts.add(split_repository(settings.registry)[0])
    return hosts


# -- credentials -------------------------------------------------------------------------------

def credentials_from_files(files: list[Path], host: str,
                           repository: str = "") -> Credentials | None:
    """The first auth file that has an entry for ``host`` (unreadable or absent files skipped)."""
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: not a JSON object")
        found = credentials_from_auth_data(data, host, repository, source=str(path))
        if found is not None:
            return found
    return None


def credentials_for(host: str, settings: Settings,
                    env: Mapping[str, str] | None = None) -> Credentials | None:
    """Credentials for ``host``: the settings' user/password when ``host`` is the CI / configured
    registry (never sent elsewhere), else the auth files. The secret is masked from then on."""
    env = os.environ if env is None else env
    found: Credentials | None = None
    user, password = settings.registry_user, settings.registry_password
    if user and password and host in own_registry_hosts(settings):
        found = Credentials(user, Secret(str(password)), "CI_REGISTRY_USER/CI_REGISTRY_PASSWORD")
    else:
        files = default_auth_files(env)
        if settings.auth_file is not None and settings.auth_file not in files:
            files.insert(0, settings.auth_file)
        found = credentials_from_files(files, host)
    if found is not None:
        console.register_secret(str(found.password))
    return found


# -- auth file and cert dir for tools ----------------------------------------------------------

@dataclass(frozen=True)
class ToolAccess:
    """What a tool (buildah, skopeo) is given: an auth file and a cert dir, or ``None``."""

    authfile: Path | None = None
    cert_dir: Path | None = None


def _configured_auth_data(settings: Settings) -> dict[str, object]:
    path = settings.auth_file
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a JSON auth file ({exc})",
                          hint="fix or remove REGISTRY_AUTH_FILE / auth-file") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a JSON auth file (not an object)")
    return data


def _entries(settings: Settings, hosts: Iterable[str]) -> dict[str, Credentials]:
    entries: dict[str, Credentials] = {}
    for host in sorted(set(hosts)):
        found = credentials_for(host, settings)
        if found is not None:
            entries[host] = found
    return entries


@contextmanager
def tool_access(settings: Settings, hosts: Iterable[str], *,
                keep_auth_file: bool = False) -> Iterator[ToolAccess]:
    """A private auth file with the credentials for ``hosts`` and a cert dir trusting
    ``ca_bundle``, both removed when the block ends (also on errors).

    The auth file is written only when some host has credentials: 0600 (``O_EXCL``) in a fresh
    0700 folder, an ``identitytoken`` entry for identity tokens, base64 ``auth`` otherwise.
    ``keep_auth_file`` (buildah, whose FROM lines may name any registry) starts from the
    configured auth file's entries, and passes that file through as it is when there is nothing
    to add.
    """
    entries = _entries(settings, hosts)
    base = _configured_auth_data(settings) if keep_auth_file else {}
    folder = Path(tempfile.mkdtemp(prefix="kiln-access-"))
    try:
        os.chmod(folder, 0o700)
        authfile: Path | None = None
        if entries:
            data = auth_file_data(entries, base)
            for entry in entries.values():
                console.register_secret(auth_file_entry(entry).get("auth", ""))
            authfile = folder / "auth.json"
            fd = os.open(authfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
        elif keep_auth_file:
            authfile = settings.auth_file
        cert_dir: Path | None = None
        if settings.ca_bundle is not None:
            cert_dir = folder / "certs"
            cert_dir.mkdir()
            shutil.copyfile(settings.ca_bundle, cert_dir / "ca.crt")
        yield ToolAccess(authfile, cert_dir)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def planned_tool_access(settings: Settings, hosts: Iterable[str], *,
                        keep_auth_file: bool = False) -> ToolAccess:
    """What :func:`tool_access` would give, with placeholders instead of the files (for a dry
    run's plan: never a credential, nothing written)."""
    if _entries(settings, hosts):
        authfile: Path | None = PLANNED_AUTH_FILE
    else:
        authfile = settings.auth_file if keep_auth_file else None
    return ToolAccess(authfile, PLANNED_CERT_DIR if settings.ca_bundle is not None else None)


# -- which registry ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TargetRegistry:
    """The registry prefix kiln works with. ``prefix`` is ``None`` when it is the embedded local
    registry and that is not running (a dry run never starts it)."""

    prefix: str | None
    local: bool


def configured_registry(settings: Settings) -> str | None:
    """The configured registry prefix; ``None`` means the embedded local registry. In CI
    without one, a :class:`ConfigError` (a pipeline never pushes to a private local registry)."""
    if settings.registry:
        return settings.registry
    if settings.ci.in_ci:
        raise ConfigError(
            "no registry configured in CI",
            hint="set CI_REGISTRY_IMAGE (GitLab sets it when the project registry is enabled) "
                 "or KILN_REGISTRY",
        )
    return None


def target_registry(settings: Settings, *, start: bool = True) -> TargetRegistry:
    """The registry to use (see the module docstring); starts the embedded local registry when
    ``start`` and not a dry run, and it is not running yet."""
    configured = configured_registry(settings)
    if configured is not None:
        return TargetRegistry(configured, local=False)
    state = local_registry_status(settings.state_dir)
    if state is None and start and not settings.dry_run:
        state = start_local_registry(settings.state_dir)
        console.step(f"embedded local registry at {state.address}")
    return TargetRegistry(state.address if state is not None else None, local=True)
