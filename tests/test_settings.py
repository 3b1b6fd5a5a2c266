"""Settings layering, coercion and validation: pure, no I/O, no subprocess."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kiln.arch import normalize_arch, parse_arches
from kiln.ci_context import CIContext
from kiln.errors import ConfigError, InputError
from kiln.redact import Secret
from kiln.settings import OPTION, OPTIONS, Option, Settings, load_settings

ROOT = Path("/repo")

pytestmark = pytest.mark.usefixtures("no_subprocess")


def resolve(config=None, env=None, flags=None) -> Settings:
    return Settings.resolve(ROOT, config or {}, env or {}, flags or {})


def test_defaults() -> None:
    s = resolve()
    assert s.builds_dir == ROOT / "builds"
    assert s.includes_dir == ROOT / "includes"
    assert s.state_dir == ROOT / ".kiln"
    assert s.image is None and s.registry is None
    assert s.image_format == "docker" and s.isolation == "chroot" and s.layers
    assert s.base_image_tag == "latest"
    assert s.pipeline_id == "local"


def test_layers_in_order_defaults_pyproject_env_flags() -> None:
    config = {"base-image-tag": "from-pyproject", "registry": "cfg.example/x"}
    assert resolve(config).base_image_tag == "from-pyproject"
    env = {"BASE_IMAGE_TAG": "from-env"}
    assert resolve(config, env).base_image_tag == "from-env"
    assert resolve(config, env, {"base_image_tag": "from-flag"}).base_image_tag == "from-flag"
    # KILN_<NAME> is the generic spelling and wins over the documented alias (docs/settings.md)
    env2 = {"BASE_IMAGE_TAG": "alias", "KILN_BASE_IMAGE_TAG": "generic"}
    assert resolve({}, env2).base_image_tag == "generic"
    # None flags mean "not given"
    assert resolve(config, env, {"base_image_tag": None}).base_image_tag == "from-env"


def test_reference_env_vars() -> None:
    env = {
        "IMAGE_NAME": "backend",
        "IMAGE_ARCH": "aarch64",
        "IMAGE_ARCHES": "amd64 arm64, x86_64",
        "buildah_image_tag": "v2",
        "STORAGE_DRIVER": "vfs",
        "BUILDAH_ISOLATION": "oci",
    }
    s = resolve({}, env)
    assert s.image == "backend"
    assert s.arch == "arm64"
    assert s.arches == ("amd64", "arm64")
    assert s.buildah_image_tag == "v2"
    assert s.storage_driver == "vfs"
    assert s.isolation == "oci"


def test_registry_from_gitlab() -> None:
    env = {"CI_REGISTRY_IMAGE": "registry.gitlab.com/group/proj/", "CI_PIPELINE_ID": "123"}
    s = resolve({}, env)
    assert s.registry == "registry.gitlab.com/group/proj"
    assert s.pipeline_id == "123"
    assert s.ci.in_ci
    # explicit KILN_REGISTRY wins over GitLab's
    assert resolve({}, {**env, "KILN_REGISTRY": "127.0.0.1:5000"}).registry == "127.0.0.1:5000"


def test_password_is_masked_in_repr() -> None:
    s = resolve({}, {"CI_REGISTRY_PASSWORD": "hunter2-very-secret", "CI_REGISTRY_USER": "bot"})
    assert isinstance(s.registry_password, Secret)
    assert str(s.registry_password) == "hunter2-very-secret"
    assert "hunter2" not in repr(s)
    assert s.registry_user == "bot"


def test_paths_relative_to_project() -> None:
    s = resolve({"builds-dir": "images", "ca-bundle": "/etc/ssl/ca.pem"})
    assert s.builds_dir == ROOT / "images"
    assert s.ca_bundle == Path("/etc/ssl/ca.pem")


@pytest.mark.parametrize(
    ("config", "env", "flags", "needle"),
    [
        ({"unknown-key": 1}, {}, {}, "unknown setting 'unknown-key'"),
        ({}, {"KILN_STRICT": "maybe"}, {}, "KILN_STRICT"),
        ({}, {"IMAGE_ARCH": "aarch 64"}, {}, "IMAGE_ARCH"),
        ({}, {"IMAGE_NAME": "../etc"}, {}, "invalid image name"),
        ({}, {}, {"image": "Back/End"}, "invalid image name"),
        ({}, {"BUILDAH_ISOLATION": "docker"}, {}, "BUILDAH_ISOLATION"),
        ({}, {"BUILDAH_FORMAT": "v1"}, {}, "BUILDAH_FORMAT"),
        ({"images": {"x": {"destinatons": []}}}, {}, {}, "unknown keys"),
        ({}, {}, {"nope": 1}, "unknown option"),
    ],
)
def test_bad_values_name_their_source(config, env, flags, needle) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(config, env, flags)
    assert needle in str(err.value)
    assert err.value.exit_code == 2


def test_empty_image_name_is_not_set() -> None:
    assert resolve({}, {"IMAGE_NAME": "  "}).image is None


def test_per_image_settings() -> None:
    config = {
        "images": {
            "backend": {"destinations": ["quay.io/org", "registry.gitlab.com/g/p/"], "private": True},
        }
    }
    s = resolve(config)
    assert s.image_settings("backend").destinations == ("quay.io/org", "registry.gitlab.com/g/p")
    assert s.image_settings("backend").private
    assert s.image_settings("other").destinations == ()


def test_settings_are_frozen() -> None:
    s = resolve()
    with pytest.raises(AttributeError):
        s.image = "x"  # type: ignore[misc]
    assert s.replace(image="x").image == "x"


def test_load_settings_reads_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.kiln]\nbase-image-tag = "pinned"\n')
    s = load_settings(tmp_path, env={})
    assert s.base_image_tag == "pinned"
    (tmp_path / "pyproject.toml").write_text("[tool.kiln\n")
    with pytest.raises(ConfigError, match="pyproject.toml"):
        load_settings(tmp_path, env={})


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("aarch64", "arm64"), ("x86_64", "amd64"), ("AMD64", "amd64"), ("ppc64el", "ppc64le"),
     ("s390x", "s390x"), (" arm64 ", "arm64")],
)
def test_arch_normalisation(given: str, canonical: str) -> None:
    assert normalize_arch(given) == canonical


@pytest.mark.parametrize("bad", ["i386", "aarch 64", "", "arm"])
def test_unsupported_arch(bad: str) -> None:
    with pytest.raises(InputError, match="unsupported architecture"):
        normalize_arch(bad)


def test_parse_arches_dedupes() -> None:
    assert parse_arches("amd64 x86_64 aarch64,arm64") == ("amd64", "arm64")


def test_ci_context_kinds() -> None:
    ctx = CIContext.from_env(
        {"CI": "true", "CI_PIPELINE_ID": "9", "CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main"}
    )
    assert ctx.is_gitlab and ctx.is_default_branch and not ctx.is_tag_pipeline
    mr = CIContext.from_env({"CI_PIPELINE_ID": "9", "CI_MERGE_REQUEST_IID": "7"})
    assert mr.is_merge_request and not mr.is_default_branch
    local = CIContext.from_env({})
    assert not local.in_ci and local.pipeline_id == "local"


# -- each setting declared once (settings.OPTIONS) -----------------------------------------------

SAMPLES = {  # kind -> (a value as the environment spells it, the coerced value)
    "str": ("some-value", "some-value"),
    "bool": ("yes", True),
    "path": ("sub/dir", ROOT / "sub/dir"),
    "arch": ("aarch64", "arm64"),
    "arches": ("x86_64, s390x", ("amd64", "s390x")),
    "list": ("a.example b.example", ("a.example", "b.example")),
    "mapping": ("A=1,B=2", {"A": "1", "B": "2"}),
    "secret": ("s3cret-value", "s3cret-value"),
    "registry": ("registry.example:5000/g/", "registry.example:5000/g"),
    "seconds": ("2.5", 2.5),
}


def _sample(option: Option) -> tuple[str, object]:
    if option.name == "image":
        return "backend", "backend"
    if option.name == "build_secrets":
        return "id=npm,env=NPM_TOKEN id=pip,src=/p", ("id=npm,env=NPM_TOKEN", "id=pip,src=/p")
    if option.kind == "choice":
        return option.choices[-1], option.choices[-1]
    lifecycle = {"prune_keep": ("3", "3"), "prune_older_than": ("12h", "12h"),
                 "prune_open_mrs": ("7 12", ("7", "12"))}
    if option.name in lifecycle:
        return lifecycle[option.name]
    return SAMPLES[option.kind]


def test_every_settings_field_is_declared_once_and_every_declaration_is_a_field() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)} - {"project_dir", "images", "ci"}
    assert fields == set(OPTION)
    assert len(OPTIONS) == len(OPTION)  # no name declared twice


@pytest.mark.parametrize("option", OPTIONS, ids=[o.name for o in OPTIONS])
def test_a_declared_setting_is_read_from_each_env_name_and_coerced(option: Option) -> None:
    raw, expected = _sample(option)
    for var in option.env_names:
        value = getattr(resolve({}, {var: raw}), option.name)
        assert value == expected, var
    # the first name wins (KILN_<NAME> before the convention aliases)
    if len(option.env_names) > 1:
        wins = resolve({}, {option.env_names[0]: raw, option.env_names[1]: "~~bad~~"})
        assert getattr(wins, option.name) == expected
    # the same declaration coerces pyproject values and flags
    assert getattr(resolve({option.key: raw}), option.name) == expected
    assert getattr(resolve({}, {}, {option.name: raw}), option.name) == expected


@pytest.mark.parametrize("option", OPTIONS, ids=[o.name for o in OPTIONS])
def test_defaults_come_from_the_declaration(option: Option) -> None:
    value = getattr(resolve(), option.name)
    if option.default_factory is not None:
        assert value == option.default_factory()
    elif option.kind == "path" and option.default is not None:
        assert value == ROOT / option.default
    else:
        assert value == option.default


def test_task_help_comes_from_the_declaration() -> None:
    from kiln.tasks import namespace
    from kiln.tasks.common import FLAG_HELP, FLAG_OPTIONS, OWN_FLAGS

    seen = set()
    for name in namespace.task_names:
        for flag, text in FLAG_HELP[name].items():
            option = FLAG_OPTIONS.get(flag)
            if option is None or flag in OWN_FLAGS[name] or (
                    name == "binfmt-register" and flag == "arch"):
                continue  # a task's own parameter: its help is the task's
            seen.add(option.name)
            assert f"(env {', '.join(option.env_names)}" in text, (name, flag, text)
    assert {"image", "registry", "arch", "arches", "base_image_tag", "dry_run",
            "json_output", "deps", "push", "strict"} <= seen


def test_fallback_env_is_below_pyproject() -> None:
    env = {"CI_REGISTRY_IMAGE": "registry.gitlab.com/g/p"}
    assert resolve({}, env).registry == "registry.gitlab.com/g/p"
    assert resolve({"registry": "own.example/x"}, env).registry == "own.example/x"


def test_flag_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="option --json: invalid value for json_output"):
        resolve({}, {}, {"json_output": "maybe"})
    with pytest.raises(ConfigError, match="environment variable IMAGE_NAME: invalid image name"):
        resolve({}, {"IMAGE_NAME": "../etc"})


def test_options_table_lists_every_setting() -> None:
    from kiln.settings import options_table

    table = options_table()
    for option in OPTIONS:
        assert f"| `{option.key}` | `KILN_{option.name.upper()}`" in table


@pytest.mark.parametrize("value", ["1", "true", "yes", "on"])
def test_require_hadolint_and_ci_graph_exclude_are_settings(value: str) -> None:
    """Read directly from os.environ before (nox_sessions, tasks/graph.py); now declared, so a
    [tool.kiln] key works too and a bad value names its source."""
    assert resolve({}, {"KILN_REQUIRE_HADOLINT": value}).require_hadolint is True
    assert resolve({"require-hadolint": True}, {}).require_hadolint is True
    assert resolve({}, {}).require_hadolint is False
    with pytest.raises(ConfigError, match="environment variable KILN_REQUIRE_HADOLINT"):
        resolve({}, {"KILN_REQUIRE_HADOLINT": "maybe"})
    assert resolve({}, {"KILN_CI_GRAPH_EXCLUDE": "a, b c"}).ci_graph_exclude == ("a", "b", "c")
