"""One settings model for every task, session and CI job; each setting declared once.

Layers, lowest to highest (as cibuildwheel does): built-in defaults < ``[tool.kiln]`` in the
repository's ``pyproject.toml`` < environment (the convention variables such as ``IMAGE_NAME``,
GitLab's ``CI_*`` and a ``KILN_<NAME>`` variable for every setting) < task flags.

Every setting is one :class:`Option` in :data:`OPTIONS` (as nox declares its options): name,
kind, default, environment variables, help text and task flag. The :class:`Settings` fields take
their defaults from it, and the environment lookup, the coercion of values and the help of the
task flags (:mod:`kiln.tasks.common`) are derived from it, so a setting cannot be half-added.
:meth:`Settings.resolve` is pure (mappings in, settings out); :func:`load_settings` is the one
place that reads ``pyproject.toml``. The list for people: docs/settings.md.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kiln.arch import host_arch, normalize_arch, parse_arches
from kiln.ci_context import CIContext
from kiln.credentials import parse_build_secret
from kiln.errors import ConfigError, InputError
from kiln.redact import Secret as Secret  # re-exported: older imports of kiln.settings.Secret
from kiln.registry.reference import DOCKER_HUB, split_repository
from kiln.retention import DEFAULT_MATCH, check_pattern, parse_age, parse_iid, parse_keep

Kind = Literal["str", "bool", "path", "arch", "arches", "list", "mapping", "secret", "registry",
               "choice", "seconds"]


@dataclass(frozen=True)
class Option:
    """One setting: everything kiln knows about it, in one place.

    ``env`` lists the convention variables after the generic ``KILN_<NAME>`` (the first one
    set wins); ``fallback_env`` applies only when neither ``pyproject.toml`` nor ``env`` set the
    value (``CI_REGISTRY_IMAGE``: GitLab's default, below the project's own choice). A path
    default is relative to the project directory. ``check`` validates a coerced value (each
    item of a list). ``flag`` is the task flag's name when it differs from ``name``;
    ``negatable`` flags default to on and are turned off with ``--no-<flag>``.
    """

    name: str
    kind: Kind
    help: str
    default: Any = None
    default_factory: Callable[[], Any] | None = None
    env: tuple[str, ...] = ()
    fallback_env: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    split_commas: bool = True
    check: Callable[[Any], Any] | None = None
    flag: str | None = None
    negatable: bool = False

    @property
    def key(self) -> str:
        """The key in ``[tool.kiln]``."""
        return self.name.replace("_", "-")

    @property
    def flag_name(self) -> str:
        """The task flag's parameter name (``json`` for ``json_output``)."""
        return self.flag or self.name

    @property
    def env_names(self) -> tuple[str, ...]:
        """The variables that set this option, highest precedence first."""
        return ("KILN_" + self.name.upper(), *self.env)

    def task_help(self, text: str | None = None) -> str:
        """The help of the task flag: ``text`` (default: the setting's help) and where else
        the value can come from (the environment variables, in precedence order)."""
        where = [*self.env_names, *self.fallback_env]
        shown = " ".join(self.default) if isinstance(self.default, tuple) else self.default
        default = "" if shown in (None, "") or self.kind == "bool" else f"; default {shown}"
        return f"{text or self.help} (env {', '.join(where)}{default})"

    def field(self) -> Any:
        """The :class:`Settings` field: default (or factory) from this declaration."""
        metadata = {"option": self}
        if self.default_factory is not None:
            return dataclasses.field(default_factory=self.default_factory, metadata=metadata)
        if self.kind == "path" and self.default is not None:
            return dataclasses.field(metadata=metadata)  # relative to the project: resolve()
        if isinstance(self.default, Mapping):
            frozen = dict(self.default)
            return dataclasses.field(default_factory=lambda: dict(frozen), metadata=metadata)
        return dataclasses.field(default=self.default, metadata=metadata)

    def coerce(self, value: Any, source: str, project_dir: Path) -> Any:
        """``value`` from ``source`` as this option's type, or a :class:`ConfigError` naming
        the source and the option."""
        try:
            result = _COERCE[self.kind](self, value, project_dir)
            if self.check is not None:
                items = result if isinstance(result, tuple) else (result,)
                for item in items:
                    self.check(item)
            return result
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: invalid value for {self.name}: {exc}") from exc
        except (ConfigError, InputError) as exc:
            raise ConfigError(f"{source}: {exc.message}", hint=exc.hint) from exc


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


def _to_bool(option: Option, value: Any, project_dir: Path) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def _to_path(option: Option, value: Any, project_dir: Path) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else project_dir / path


def _to_arches(option: Option, value: Any, project_dir: Path) -> tuple[str, ...]:
    if isinstance(value, list | tuple):
        value = " ".join(str(v) for v in value)
    return parse_arches(str(value))


def _to_list(option: Option, value: Any, project_dir: Path) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value.replace(",", " ") if option.split_commas else value).split()
    if not isinstance(value, list | tuple):
        raise ValueError("expected a list of strings")
    return tuple(str(v) for v in value)


def _to_mapping(option: Option, value: Any, project_dir: Path) -> dict[str, str]:
    if isinstance(value, str):
        pairs = [p for p in value.replace(",", " ").split() if p]
        if any("=" not in p for p in pairs):
            raise ValueError("expected NAME=value pairs")
        value = dict(p.split("=", 1) for p in pairs)
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of NAME = value")
    return {str(k): str(v) for k, v in value.items()}


def _to_registry(option: Option, value: Any, project_dir: Path) -> str:
    text = str(value).strip().rstrip("/")
    if "://" in text or any(c.isspace() for c in text) or not text:
        example = text.split("://", 1)[1] if "://" in text else ""
        if not example or any(c.isspace() for c in example):
            example = "registry.example.com/group"
        raise ValueError(f"{value!r} is not a registry prefix: expected "
                         f"host[:port][/path] without a scheme, e.g. {example}")
    split_repository(text)  # the host's grammar and port range
    return text


def _to_seconds(option: Option, value: Any, project_dir: Path) -> float:
    seconds = float(value)
    if not 0 < seconds < float("inf"):
        raise ValueError(f"expected a positive number of seconds, got {value!r}")
    return seconds


def _to_choice(option: Option, value: Any, project_dir: Path) -> str:
    text = str(value)
    if text not in option.choices:
        *first, last = option.choices
        raise ValueError(f"expected {', '.join(first)} or {last}")
    return text


_COERCE: dict[str, Callable[[Option, Any, Path], Any]] = {
    "str": lambda option, value, project_dir: str(value),
    "bool": _to_bool,
    "path": _to_path,
    "arch": lambda option, value, project_dir: normalize_arch(str(value)),
    "arches": _to_arches,
    "list": _to_list,
    "mapping": _to_mapping,
    "secret": lambda option, value, project_dir: Secret(str(value)),
    "registry": _to_registry,
    "choice": _to_choice,
    "seconds": _to_seconds,
}

DRY_RUN_HELP = "print the plan (files, exact tool commands, registry operations); change nothing"
JSON_HELP = ("print a machine-readable JSON summary on stdout (what was built/pushed/tagged: "
             "image, tag, digest; ok / exit code / error); messages go to stderr")

# Every setting, once. Order is the order of the Settings fields.
OPTIONS: tuple[Option, ...] = (
    Option("builds_dir", "path", "folder of the build files (<image>.in)", default="builds"),
    Option("includes_dir", "path", "folder searched by #include", default="includes"),
    Option("state_dir", "path", "kiln's working folder (build contexts, embedded registry)",
           default=".kiln"),
    Option("image", "str", "image name: builds/<IMAGE>.in", env=("IMAGE_NAME",),
           check=validate_image_name),
    Option("arch", "arch", "target architecture: amd64 arm64 ppc64le s390x (aliases such as "
           "aarch64 work)", default_factory=host_arch, env=("IMAGE_ARCH",)),
    Option("arches", "arches", "architectures, e.g. 'amd64 arm64'", default=(),
           env=("IMAGE_ARCHES",)),
    Option("registry", "registry", "registry prefix for our images, e.g. 127.0.0.1:5000 or "
           "registry.gitlab.com/group/project; else the embedded local registry",
           fallback_env=("CI_REGISTRY_IMAGE",)),
    Option("upstream_registry", "registry", "registry of upstream images (FROM of our bases)",
           default=DOCKER_HUB),
    Option("public_registries", "list", "registries whose images count as public",
           default=("quay.io", DOCKER_HUB)),
    Option("base_image_tag", "str", "tag of our base images used in FROM", default="latest",
           env=("BASE_IMAGE_TAG",)),
    # setup-from-base (the FROM of a service): where the base image comes from. A service
    # repository derives from the image repository's base, i.e. another project's registry
    # path (docs/workflow.md); default: the registry our own images go to.
    Option("base_registry", "registry", "registry prefix setup-from-base takes the base image "
           "from (e.g. registry.example.com/group/images; tag: base-image-tag); default: the "
           "registry our images go to"),
    Option("buildah_image_tag", "str", "tag of the buildah image the CI jobs run in",
           default="latest", env=("buildah_image_tag", "BUILDAH_IMAGE_TAG")),
    Option("storage_driver", "str", "buildah storage driver (vfs, overlay)",
           env=("STORAGE_DRIVER",)),
    Option("storage_root", "path", "buildah storage root (--root)"),
    Option("storage_runroot", "path", "buildah run root (--runroot)"),
    Option("isolation", "choice", "buildah isolation", default="chroot",
           env=("BUILDAH_ISOLATION",), choices=("chroot", "oci", "rootless")),
    Option("image_format", "choice", "image format buildah writes", default="docker",
           env=("BUILDAH_FORMAT",), choices=("docker", "oci")),
    Option("layers", "bool", "keep buildah's layer cache", default=True),
    Option("strict", "bool", "treat preprocessing warnings (shell '#' comments, cpp hazards) "
           "as errors", default=False),
    Option("ca_bundle", "path", "CA bundle for registries with a private CA"),
    Option("tls_verify", "bool", "verify registries' TLS certificates", default=True),
    Option("auth_file", "path", "registry auth file (containers-auth.json)",
           env=("REGISTRY_AUTH_FILE",)),
    Option("registry_user", "str", "registry user name", env=("CI_REGISTRY_USER",)),
    Option("registry_password", "secret", "registry password (never printed)",
           env=("CI_REGISTRY_PASSWORD",)),
    Option("build_args", "mapping", "build args for every image (NAME=value)", default={}),
    Option("mirror_config", "path", "mirror configuration file (default: mirrors.yml)"),
    Option("dry_run", "bool", DRY_RUN_HELP, default=False),
    Option("json_output", "bool", JSON_HELP, default=False, flag="json"),
    # build engine (kiln.build): push after building (None = push when a registry is configured,
    # in CI, or to the embedded local registry); build missing dependency images first; the
    # build context (None = the project directory, so COPY paths are relative to the repo root).
    Option("push", "bool", "push after building (default: to the configured registry, in CI, or "
           "to the embedded local registry; --no-push keeps the image in local storage only)",
           negatable=True),
    Option("deps", "bool", "build our own base images first when their tag is missing in the "
           "target (default on; --no-deps to never build them)", default=True, negatable=True),
    Option("context_dir", "path", "build context (default: the project directory)"),
    # registry client (kiln.registry): reach registries on 127.0.0.1/localhost over TLS too
    # (by default loopback registries are plain HTTP, as the embedded local registry is).
    Option("loopback_tls", "bool", "use TLS for registries on 127.0.0.1/localhost too",
           default=False),
    # one registry operation (a request with its retries, waits and token fetch) gives up after
    # this many seconds with exit 4 (docs/registry-operations.md).
    Option("registry_deadline", "seconds", "seconds one registry operation may take, retries "
           "and waits included (then exit 4)", default=120.0),
    # offline upstream images (kiln.seed): the Debian mirror debootstrap downloads from.
    Option("seed_debian_mirror", "str", "Debian mirror debootstrap downloads from",
           default="http://deb.debian.org/debian"),
    # secrets (kiln.credentials): build secrets mounted for RUN steps (``id=npm,env=NPM_TOKEN`` or
    # ``id=pip,src=/path``: ``buildah build --secret``), and names of build args / ENV / LABEL
    # that look like credentials but are not (false alarms of the credential check).
    Option("build_secrets", "list", "build secrets for RUN steps (id=npm,env=NPM_TOKEN or "
           "id=pip,src=/path; space separated)", default=(), split_commas=False,
           check=parse_build_secret),
    Option("secret_allow", "list", "names that look like credentials but are not",
           default=()),
    # registry lifecycle (kiln.retention, kiln.prune, kiln.promote): the default retention
    # policy of every image (an image's own [tool.kiln.images.<name>.prune] table and the
    # prune flags override it), and whether promote's cross-registry copies take the image's
    # signatures and attestations along (docs/tags.md).
    Option("prune_match", "list", "tag patterns prune may remove (kiln's own tags only: p-, "
           "g-, mr-)", default=DEFAULT_MATCH, check=check_pattern),
    Option("prune_keep", "str", "prune keeps the newest N entries of each pattern",
           default="10", check=parse_keep),
    Option("prune_older_than", "str", "prune keeps anything younger than this age (30d, 12h, "
           "2w)", default="30d", check=parse_age),
    Option("prune_keep_tags", "list", "tag patterns prune never removes (besides production, "
           "latest and git-tag tags)", default=(), check=check_pattern),
    Option("prune_open_mrs", "list", "iids of open merge requests: prune keeps their mr-<iid>",
           default=(), check=parse_iid),
    Option("copy_referrers", "bool", "copy an image's signatures and attestations (OCI "
           "referrers, cosign tags) along with promote's cross-registry copies", default=True),
    # CI jobs (kiln.ci_graph, kiln.nox_sessions): images the generated child pipeline leaves to
    # hand-written jobs (for a job that runs `nox -s ci-graph` and cannot pass --exclude), and
    # whether the lint session fails when hadolint is missing (a warning otherwise).
    Option("ci_graph_exclude", "list", "images ci-graph leaves to hand-written jobs (nothing "
           "of the graph may be built FROM them; --exclude wins)", default=()),
    Option("require_hadolint", "bool", "the lint session fails when hadolint is missing "
           "(default: a warning)", default=False),
)
OPTION: Mapping[str, Option] = {option.name: option for option in OPTIONS}


def options_table() -> str:
    """Every setting as a Markdown table (``[tool.kiln]`` key, environment, default, meaning),
    made from :data:`OPTIONS` so docs/settings.md can be checked against the code."""
    rows = ["| `[tool.kiln]` key | environment (first set wins) | default | meaning |",
            "|---|---|---|---|"]
    for option in OPTIONS:
        if option.default_factory is not None:
            default = f"{option.default_factory.__name__}()"
        elif isinstance(option.default, tuple):
            default = " ".join(option.default) or "(none)"
        elif option.default in (None, {}):
            default = "(none)"
        else:
            default = str(option.default).lower() if isinstance(option.default, bool) else (
                str(option.default))
        env = ", ".join(f"`{name}`" for name in (*option.env_names, *option.fallback_env))
        rows.append(f"| `{option.key}` | {env} | {default} | {option.help.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def _setting(name: str) -> Any:
    return OPTION[name].field()


@dataclass(frozen=True)
class ImageSettings:
    """Per-image settings from ``[tool.kiln.images.<name>]``."""

    destinations: tuple[str, ...] = ()
    private: bool = False
    build_args: Mapping[str, str] = field(default_factory=dict)
    prune: Mapping[str, Any] = field(default_factory=dict)  # checked by kiln.retention


@dataclass(frozen=True)
class Settings:
    """Everything a kiln task needs to know, resolved once. The fields' defaults, help and
    environment variables are in :data:`OPTIONS`."""

    project_dir: Path
    builds_dir: Path = _setting("builds_dir")
    includes_dir: Path = _setting("includes_dir")
    state_dir: Path = _setting("state_dir")
    image: str | None = _setting("image")
    arch: str = _setting("arch")
    arches: tuple[str, ...] = _setting("arches")
    registry: str | None = _setting("registry")
    upstream_registry: str = _setting("upstream_registry")
    public_registries: tuple[str, ...] = _setting("public_registries")
    base_image_tag: str = _setting("base_image_tag")
    base_registry: str | None = _setting("base_registry")
    buildah_image_tag: str = _setting("buildah_image_tag")
    storage_driver: str | None = _setting("storage_driver")
    storage_root: Path | None = _setting("storage_root")
    storage_runroot: Path | None = _setting("storage_runroot")
    isolation: str = _setting("isolation")
    image_format: str = _setting("image_format")
    layers: bool = _setting("layers")
    strict: bool = _setting("strict")
    ca_bundle: Path | None = _setting("ca_bundle")
    tls_verify: bool = _setting("tls_verify")
    auth_file: Path | None = _setting("auth_file")
    registry_user: str | None = _setting("registry_user")
    registry_password: Secret | None = _setting("registry_password")
    build_args: Mapping[str, str] = _setting("build_args")
    mirror_config: Path | None = _setting("mirror_config")
    dry_run: bool = _setting("dry_run")
    json_output: bool = _setting("json_output")
    push: bool | None = _setting("push")
    deps: bool = _setting("deps")
    context_dir: Path | None = _setting("context_dir")
    loopback_tls: bool = _setting("loopback_tls")
    registry_deadline: float = _setting("registry_deadline")
    seed_debian_mirror: str = _setting("seed_debian_mirror")
    build_secrets: tuple[str, ...] = _setting("build_secrets")
    secret_allow: tuple[str, ...] = _setting("secret_allow")
    prune_match: tuple[str, ...] = _setting("prune_match")
    prune_keep: str = _setting("prune_keep")
    prune_older_than: str = _setting("prune_older_than")
    prune_keep_tags: tuple[str, ...] = _setting("prune_keep_tags")
    prune_open_mrs: tuple[str, ...] = _setting("prune_open_mrs")
    copy_referrers: bool = _setting("copy_referrers")
    ci_graph_exclude: tuple[str, ...] = _setting("ci_graph_exclude")
    require_hadolint: bool = _setting("require_hadolint")
    images: Mapping[str, ImageSettings] = field(default_factory=dict)
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
        """Merge the layers; pure. ``config`` is the ``[tool.kiln]`` table; ``flags`` are keyed
        by setting name (``None`` = not given)."""
        config = dict(config or {})
        env = dict(env or {})
        flags = {k: v for k, v in (flags or {}).items() if v is not None}
        values: dict[str, tuple[str, Any]] = {}

        images_raw = config.pop("images", {})
        for key, value in config.items():
            name = key.replace("-", "_")
            if name not in OPTION:
                raise ConfigError(
                    f"pyproject.toml [tool.kiln]: unknown setting {key!r}",
                    hint=f"known settings: {', '.join(sorted(o.key for o in OPTIONS))}",
                )
            values[name] = ("pyproject.toml [tool.kiln] " + key, value)

        for option in OPTIONS:
            names = option.env_names if option.name in values else (
                *option.env_names, *option.fallback_env)
            for var in names:
                if env.get(var, "").strip() != "":
                    values[option.name] = (f"environment variable {var}", env[var])
                    break

        for name, value in flags.items():
            if name not in OPTION:
                raise ConfigError(f"unknown option {name!r}")
            values[name] = (f"option --{OPTION[name].flag_name.replace('_', '-')}", value)

        kwargs: dict[str, Any] = {
            option.name: option.coerce(option.default, "default", project_dir)
            for option in OPTIONS if option.kind == "path" and option.default is not None
        }
        for name, (source, value) in values.items():
            kwargs[name] = OPTION[name].coerce(value, source, project_dir)
        return cls(project_dir=project_dir, ci=CIContext.from_env(env),
                   images=_parse_images(images_raw), **kwargs)


def _check_declarations() -> None:
    """Every :class:`Settings` field but the context ones is declared in :data:`OPTIONS`, and
    the other way round (a setting cannot be half-added)."""
    declared = {f.name for f in dataclasses.fields(Settings) if "option" in f.metadata}
    others = {f.name for f in dataclasses.fields(Settings)} - declared
    if declared != set(OPTION) or others != {"project_dir", "images", "ci"}:
        raise TypeError(f"Settings fields and OPTIONS differ: {sorted(declared ^ set(OPTION))}, "
                        f"undeclared {sorted(others - {'project_dir', 'images', 'ci'})}")


_check_declarations()


def _parse_images(raw: Any) -> dict[str, ImageSettings]:
    if not isinstance(raw, Mapping):
        raise ConfigError("pyproject.toml [tool.kiln.images] must be a table of image tables")
    result: dict[str, ImageSettings] = {}
    allowed = {"destinations", "private", "build-args", "prune"}
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
            prune=table.get("prune", {}),
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
