"""One settings model for every task, session and CI job.

Layers, lowest to highest (as cibuildwheel does): built-in defaults < ``[tool.kiln]`` in the
repository's ``pyproject.toml`` < environment (REFERENCE §3 variables, GitLab's ``CI_*`` and a
``KILN_<NAME>`` variable for every setting) < task flags. The result is a frozen dataclass;
:meth:`Settings.resolve` is pure (mappings in, settings out) so every rule is unit-testable
without touching the disk; :func:`load_settings` is the one place that reads ``pyproject.toml``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.arch import host_arch, normalize_arch, parse_arches
from kiln.ci_context import CIContext
from kiln.errors import ConfigError, InputError


class Secret(str):
    """A string that never shows itself in ``repr``/f-string debugging output.

    ``str(secret)`` still yields the value (tools need it); ``repr`` is masked, so a settings
    object can be logged safely.
    """

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True)
class ImageSettings:
    """Per-image settings from ``[tool.kiln.images.<name>]``."""

    destinations: tuple[str, ...] = ()
    private: bool = False
    build_args: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """Everything a kiln task needs to know, resolved once."""

    project_dir: Path
    builds_dir: Path
    includes_dir: Path
    state_dir: Path
    image: str | None = None
    arch: str = field(default_factory=host_arch)
    arches: tuple[str, ...] = ()
    registry: str | None = None
    upstream_registry: str = "docker.io"
    public_registries: tuple[str, ...] = ("quay.io", "docker.io")
    base_image_tag: str = "latest"
    buildah_image_tag: str = "latest"
    storage_driver: str | None = None
    storage_root: Path | None = None
    storage_runroot: Path | None = None
    isolation: str = "chroot"
    image_format: str = "docker"
    layers: bool = True
    strict: bool = False
    ca_bundle: Path | None = None
    tls_verify: bool = True
    auth_file: Path | None = None
    registry_user: str | None = None
    registry_password: Secret | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    images: Mapping[str, ImageSettings] = field(default_factory=dict)
    mirror_config: Path | None = None
    dry_run: bool = False
    json_output: bool = False
    # build engine (kiln.build): push after building (None = push when a registry is configured,
    # in CI, or to the embedded local registry); build missing dependency images first; the
    # build context (None = the project directory, so COPY paths are relative to the repo root).
    push: bool | None = None
    deps: bool = True
    context_dir: Path | None = None
    # registry client (kiln.registry): reach registries on 127.0.0.1/localhost over TLS too
    # (by default loopback registries are plain HTTP, as the embedded local registry is).
    loopback_tls: bool = False
    # offline upstream images (kiln.seed): the Debian mirror debootstrap downloads from.
    seed_debian_mirror: str = "http://deb.debian.org/debian"
    # secrets (kiln.secrets): build secrets mounted for RUN steps (``id=npm,env=NPM_TOKEN`` or
    # ``id=pip,src=/path``: ``buildah build --secret``), and names of build args / ENV / LABEL
    # that look like credentials but are not (false alarms of the credential check).
    build_secrets: tuple[str, ...] = ()
    secret_allow: tuple[str, ...] = ()
    ci: CIContext = field(default_factory=CIContext)

    # -- derived -------------------------------------------------------------------------
    @property
    def pipeline_id(self) -> str:
        return self.ci.pipeline_id

    def image_settings(self, name: str) -> ImageSettings:
        return self.images.get(name, ImageSettings())

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    # -- resolution ----------------------------------------------------------------------
    @classmethod
    def resolve(
        cls,
        project_dir: Path,
        config: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        flags: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Merge the layers; pure. ``config`` is the ``[tool.kiln]`` table."""
        config = dict(config or {})
        env = dict(env or {})
        flags = {k: v for k, v in (flags or {}).items() if v is not None}
        values: dict[str, Any] = {}

        images_raw = config.pop("images", {})
        for key, value in config.items():
            name = key.replace("-", "_")
            if name not in _SETTABLE:
                raise ConfigError(
                    f"pyproject.toml [tool.kiln]: unknown setting {key!r}",
                    hint=f"known settings: {', '.join(sorted(n.replace('_', '-') for n in _SETTABLE))}",
                )
            values[name] = ("pyproject.toml [tool.kiln] " + key, value)

        for name in _SETTABLE:
            for var in _env_names(name):
                if var in env and env[var].strip() != "":
                    values[name] = (f"environment variable {var}", env[var])
                    break
        if "registry" not in values and "CI_REGISTRY_IMAGE" in env and env["CI_REGISTRY_IMAGE"]:
            values["registry"] = ("environment variable CI_REGISTRY_IMAGE", env["CI_REGISTRY_IMAGE"])

        for name, value in flags.items():
            if name not in _SETTABLE:
                raise ConfigError(f"unknown option {name!r}")
            values[name] = (f"option --{name.replace('_', '-')}", value)

        kwargs: dict[str, Any] = {}
        for name, (source, value) in values.items():
            kwargs[name] = _coerce(name, value, source, project_dir)

        ci = CIContext.from_env(env)
        kwargs.setdefault("registry_user", ci.registry_user)
        kwargs["images"] = _parse_images(images_raw)
        defaults = {
            "builds_dir": project_dir / "builds",
            "includes_dir": project_dir / "includes",
            "state_dir": project_dir / ".kiln",
        }
        for key, default in defaults.items():
            kwargs.setdefault(key, default)
        if "image" in kwargs:
            kwargs["image"] = validate_image_name(kwargs["image"], "image name")
        return cls(project_dir=project_dir, ci=ci, **kwargs)


# Settings a user may set, and the environment variables that set each (first wins).
_ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "image": ("IMAGE_NAME",),
    "arch": ("IMAGE_ARCH",),
    "arches": ("IMAGE_ARCHES",),
    "base_image_tag": ("BASE_IMAGE_TAG",),
    "buildah_image_tag": ("buildah_image_tag", "BUILDAH_IMAGE_TAG"),
    "storage_driver": ("STORAGE_DRIVER",),
    "isolation": ("BUILDAH_ISOLATION",),
    "image_format": ("BUILDAH_FORMAT",),
    "auth_file": ("REGISTRY_AUTH_FILE",),
    "registry_user": ("CI_REGISTRY_USER",),
    "registry_password": ("CI_REGISTRY_PASSWORD",),
}
_SETTABLE = tuple(
    f.name for f in dataclasses.fields(Settings) if f.name not in {"project_dir", "ci", "images"}
)


def _env_names(name: str) -> tuple[str, ...]:
    return ("KILN_" + name.upper(), *_ENV_ALIASES.get(name, ()))


_PATH_FIELDS = {
    "builds_dir", "includes_dir", "state_dir", "ca_bundle", "auth_file", "mirror_config",
    "storage_root", "storage_runroot", "context_dir",
}
_BOOL_FIELDS = {"layers", "strict", "tls_verify", "dry_run", "json_output", "push", "deps",
                "loopback_tls"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_IMAGE_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")


def validate_image_name(value: str, what: str = "image name") -> str:
    """An image name is a single path component of a repository: no slashes, no ``..``."""
    if not isinstance(value, str) or not _IMAGE_NAME.match(value):
        raise ConfigError(
            f"invalid {what} {value!r}",
            hint="use lowercase letters, digits and . _ - (the name of a file builds/<name>.in)",
        )
    return value


def _coerce(name: str, value: Any, source: str, project_dir: Path) -> Any:
    try:
        if name in _BOOL_FIELDS:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(f"expected true/false, got {value!r}")
        if name in _PATH_FIELDS:
            path = Path(str(value)).expanduser()
            return path if path.is_absolute() else project_dir / path
        if name == "arch":
            return normalize_arch(str(value))
        if name == "arches":
            if isinstance(value, list | tuple):
                value = " ".join(str(v) for v in value)
            return parse_arches(str(value))
        if name == "build_secrets":
            if isinstance(value, str):
                value = value.split()
            from kiln.secrets import parse_build_secret

            return tuple(str(v) for v in value if parse_build_secret(str(v)))
        if name == "secret_allow":
            if isinstance(value, str):
                value = value.replace(",", " ").split()
            return tuple(str(v) for v in value)
        if name == "public_registries":
            if isinstance(value, str):
                value = value.replace(",", " ").split()
            return tuple(str(v) for v in value)
        if name == "build_args":
            if isinstance(value, str):
                pairs = [p for p in value.replace(",", " ").split() if p]
                value = dict(p.split("=", 1) for p in pairs)
            if not isinstance(value, Mapping):
                raise ValueError("expected a table of NAME = value")
            return {str(k): str(v) for k, v in value.items()}
        if name == "registry_password":
            return Secret(str(value))
        if name in {"registry", "upstream_registry"}:
            text = str(value).strip().rstrip("/")
            if "://" in text or any(c.isspace() for c in text) or not text:
                example = text.split("://", 1)[1] if "://" in text else ""
                if not example or any(c.isspace() for c in example):
                    example = "registry.example.com/group"
                raise ValueError(f"{value!r} is not a registry prefix: expected "
                                 f"host[:port][/path] without a scheme, e.g. {example}")
            return text
        if name == "isolation" and str(value) not in {"chroot", "oci", "rootless"}:
            raise ValueError("expected chroot, oci or rootless")
        if name == "image_format" and str(value) not in {"docker", "oci"}:
            raise ValueError("expected docker or oci")
        return str(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: invalid value for {name}: {exc}") from exc
    except (ConfigError, InputError) as exc:
        raise ConfigError(f"{source}: {exc.message}", hint=exc.hint) from exc


def _parse_images(raw: Any) -> dict[str, ImageSettings]:
    if not isinstance(raw, Mapping):
        raise ConfigError("pyproject.toml [tool.kiln.images] must be a table of image tables")
    result: dict[str, ImageSettings] = {}
    allowed = {"destinations", "private", "build-args"}
    for name, table in raw.items():
        validate_image_name(name, "image name in [tool.kiln.images]")
        unknown = set(table) - allowed
        if unknown:
            raise ConfigError(
                f"pyproject.toml [tool.kiln.images.{name}]: unknown keys {sorted(unknown)}",
                hint=f"allowed: {sorted(allowed)}",
            )
        result[name] = ImageSettings(
            destinations=tuple(str(d).rstrip("/") for d in table.get("destinations", ())),
            private=bool(table.get("private", False)),
            build_args={str(k): str(v) for k, v in table.get("build-args", {}).items()},
        )
    return result


def find_project_dir(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` with a ``pyproject.toml`` or ``builds/``."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").exists() or (candidate / "builds").is_dir():
            return candidate
    return here


def read_tool_config(project_dir: Path) -> dict[str, Any]:
    """The ``[tool.kiln]`` table of ``pyproject.toml`` (empty if absent)."""
    path = project_dir / "pyproject.toml"
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    tool = data.get("tool", {}).get("kiln", {})
    if not isinstance(tool, dict):
        raise ConfigError(f"{path}: [tool.kiln] must be a table")
    return tool


def load_settings(
    project_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    **flags: Any,
) -> Settings:
    """Resolve settings for ``project_dir`` from its pyproject, the environment and flags."""
    root = project_dir or find_project_dir()
    return Settings.resolve(
        root, read_tool_config(root), os.environ if env is None else env, flags
    )
