"""mirrors.yml parsing and validation: positions (line:column), unknown keys, destinations."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import ConfigError
from kiln.mirror.config import (
    DEFAULT_DESTINATION,
    expand,
    load_config,
    parse_config,
)
from kiln.registry.reference import parse_reference

PIN = "sha256:" + "ab" * 32
VARS = {"REGISTRY": "registry.example.com/group/project"}


def parse(text: str, variables: dict[str, str] | None = None, **kw: bool):  # type: ignore[no-untyped-def]
    return parse_config(text, "mirrors.yml", VARS if variables is None else variables, **kw)


def error_of(text: str, variables: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, variables)
    return str(info.value)


def test_default_prefix_and_short_names() -> None:
    config = parse("images:\n  - postgres:alpine\n  - source: library/debian:bookworm\n")
    assert config.destination_prefix == DEFAULT_DESTINATION
    postgres, debian = config.images
    assert str(postgres.source) == "docker.io/library/postgres:alpine"
    assert str(postgres.destination) == \
        "registry.example.com/group/project/mirror/library/postgres:alpine"
    assert str(debian.destination) == \
        "registry.example.com/group/project/mirror/library/debian:bookworm"
    assert postgres.position.line == 2 and postgres.position.column == 5
    assert not postgres.explicit_destination


def test_no_tag_means_latest_and_pins_keep_tag() -> None:
    config = parse(f"images:\n  - busybox\n  - debian:bookworm@{PIN}\n")
    busybox, debian = config.images
    assert busybox.tag == "latest" and not busybox.pinned
    assert debian.tag == "bookworm" and debian.source.digest == PIN and debian.pinned
    assert debian.destination is not None and debian.destination.digest is None
    assert debian.destination.tag == "bookworm"


def test_explicit_prefix_and_per_image_override() -> None:
    config = parse(
        "destination: mirror.example.com:5000/hub\n"
        "images:\n"
        "  - quay.io/prometheus/busybox:glibc\n"
        "  - source: postgres:16\n"
        "    destination: other.example.com/db/postgres\n"
        "  - source: redis:7\n"
        "    destination: other.example.com/cache/redis:seven\n",
        {},
    )
    busybox, postgres, redis = config.images
    assert str(busybox.destination) == "mirror.example.com:5000/hub/prometheus/busybox:glibc"
    assert str(postgres.destination) == "other.example.com/db/postgres:16"  # tag from source
    assert str(redis.destination) == "other.example.com/cache/redis:seven"
    assert postgres.explicit_destination


def test_env_expansion_with_default() -> None:
    config = parse("destination: ${MIRROR_HOST:-localhost:5000}/m\nimages: [alpine:3]\n", {})
    assert str(config.images[0].destination) == "localhost:5000/m/library/alpine:3"
    assert expand("${A}/${B:-b}", {"A": "a"}) == ("a/b", [])
    assert expand("${A}", {}) == ("${A}", ["A"])


def test_settings_and_ratelimit() -> None:
    config = parse("jobs: 2\nretries: 0\nratelimit:\n  floor: 5\n  max-wait: 30\n"
                   "  poll-interval: 2.5\napproved-registries: [quay.io, ghcr.io/org]\n"
                   "images: [alpine]\n")
    assert config.jobs == 2 and config.retries == 0
    assert config.ratelimit.floor == 5
    assert config.ratelimit.max_wait == 30.0 and config.ratelimit.poll_interval == 2.5
    assert config.approved_registries == ("quay.io", "ghcr.io/org")


def test_unknown_keys_with_line_and_column() -> None:
    message = error_of("destinaton: x.example.com/m\nimages:\n  - source: alpine\n"
                       "    tag: 3\n")
    assert "mirrors.yml:1:1: unknown key 'destinaton' in top level" in message
    assert "did you mean 'destination'" in message
    assert "mirrors.yml:4:5: unknown key 'tag' in image entry" in message


def test_unknown_ratelimit_key() -> None:
    message = error_of("ratelimit:\n  flor: 3\nimages: [alpine]\n")
    assert "mirrors.yml:2:3: unknown key 'flor' in ratelimit" in message


def test_all_problems_reported_in_file_order() -> None:
    message = error_of("jobs: 0\nimages:\n  - source: Not_Valid:x\n  - 12\n  - {}\n"
                       "retries: many\n")
    lines = [line.strip() for line in message.splitlines()[1:]
             if line.strip().startswith("mirrors.yml:")]
    assert [line.split(": ", 1)[0] for line in lines] == [
        "mirrors.yml:1:7", "mirrors.yml:3:13", "mirrors.yml:4:5", "mirrors.yml:5:5",
        "mirrors.yml:6:10",
    ]
    assert "5 problems" in message


def test_yaml_syntax_error_has_position() -> None:
    message = error_of("images:\n  - alpine\n   bad: [\n")
    assert message.startswith("mirrors.yml:3:")
    assert "not valid YAML" in message


def test_pinned_source_needs_tag() -> None:
    message = error_of(f"images:\n  - debian@{PIN}\n")
    assert "mirrors.yml:2:5" in message and "needs its tag" in message


def test_destination_rules() -> None:
    assert "must start with its registry host" in error_of(
        "images:\n  - source: alpine\n    destination: mirror/alpine\n")
    assert "cannot have a digest" in error_of(
        f"images:\n  - source: alpine\n    destination: r.example.com/alpine:3@{PIN}\n")
    assert "mirrors.yml:4:5: destination r.example.com/x/library/alpine:latest is also" in \
        error_of("destination: r.example.com/x\nimages:\n  - alpine\n  - docker.io/alpine\n",
                 {})


def test_unset_registry_is_explained() -> None:
    message = error_of("images: [alpine]\n", {})
    assert "mirrors.yml:1:10" in message
    assert "${REGISTRY}" in message and "KILN_REGISTRY" in message


def test_lint_mode_tolerates_unset_destination() -> None:
    config = parse("images: [alpine]\n", {}, require_destination=False)
    assert config.images[0].destination is None
    assert config.images[0].destination_text == "${REGISTRY}/mirror/library/alpine:latest"


def test_docker_hub_cannot_be_approved() -> None:
    assert "cannot be approved" in error_of("approved-registries: [docker.io]\nimages: [a]\n")


def test_types_checked() -> None:
    assert "images must be a non-empty list" in error_of("images: []\n")
    assert "missing 'images:'" in error_of("jobs: 2\n")
    assert "ratelimit.max-wait must be a number" in error_of(
        "ratelimit: {max-wait: soon}\nimages: [a]\n")
    assert "source must be a non-empty string" in error_of("images:\n  - source: [a]\n")
    assert "top level must be a mapping" in error_of("- alpine\n")
    assert "empty mirror configuration" in error_of("")


def test_mirrored_lookup() -> None:
    config = parse(f"images: [postgres:alpine, 'debian:bookworm@{PIN}']\n")
    assert config.mirrored(parse_reference("postgres:alpine")) is config.images[0]
    assert config.mirrored(parse_reference("index.docker.io/library/postgres:alpine"))
    assert config.mirrored(parse_reference("postgres:16")) is None
    assert config.mirrored(parse_reference(f"debian@{PIN}")) is config.images[1]


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "mirrors.yml", VARS)


def test_repository_example_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    config = load_config(root / "mirrors.yml", {"REGISTRY": "127.0.0.1:5000"})
    sources = {str(i.source) for i in config.images}
    assert {"docker.io/library/debian:bookworm", "docker.io/library/busybox:latest",
            "docker.io/library/postgres:alpine"} <= sources
    debian = next(i for i in config.images if i.source.repository == "library/debian")
    # what build files reach as ${UPSTREAM_REGISTRY}/library/debian:bookworm
    assert str(debian.destination) == "127.0.0.1:5000/mirror/library/debian:bookworm"


# -- tag sets (tags:) --------------------------------------------------------------------------

def test_tag_set_entry() -> None:
    config = parse("images:\n"
                   "  - postgres:alpine\n"
                   "  - source: docker.io/node\n"
                   "    tags:\n"
                   "      semver: '>=16 <17'\n"
                   "      regex: ['^16\\.', '^lts$']\n"
                   "      exclude: -rc\n"
                   "      newest: 3\n"
                   "  - source: quay.io/org/app\n"
                   "    destination: other.example.com/apps/app\n"
                   "    tags: all\n")
    assert [str(i.source) for i in config.images] == ["docker.io/library/postgres:alpine"]
    node, app = config.tag_sets
    assert str(node.source) == "docker.io/library/node"  # short name normalised
    assert str(node.destination) == "registry.example.com/group/project/mirror/library/node"
    assert node.rule.semver == ">=16 <17" and node.rule.regex == (r"^16\.", "^lts$")
    assert node.rule.exclude == ("-rc",) and node.rule.newest == 3
    assert node.position.line == 3 and not node.explicit_destination
    assert app.rule.selects_all and app.explicit_destination
    image = app.image("v1", "every tag")
    assert str(image.source) == "quay.io/org/app:v1"
    assert str(image.destination) == "other.example.com/apps/app:v1"
    assert image.selected_by == "every tag" and image.position == app.position


def test_semver_written_as_a_number_is_a_range() -> None:
    config = parse("images:\n  - source: node\n    tags: {semver: 16.2}\n")
    assert config.tag_sets[0].rule.semver == "16.2"  # YAML's float 16.2, taken as written


@pytest.mark.parametrize(("text", "expected"), [
    # the column of the offending character itself: '(' of '(16'
    ("images:\n  - source: node\n    tags: {regex: '(16'}\n",
     "mirrors.yml:3:20: tags.regex: regex '(16' does not compile: missing ), unterminated "
     "subpattern at character 1"),
    ("images:\n  - source: node\n    tags:\n      regex: [ok, '[z']\n",
     "mirrors.yml:4:20: tags.regex: regex '[z' does not compile"),
    ("images:\n  - source: node\n    tags:\n      regex: ab(c\n",
     "mirrors.yml:4:16: tags.regex: regex 'ab(c' does not compile"),
    ("images:\n  - source: node\n    tags: {semver: '>=16 <<17'}\n",
     "mirrors.yml:3:20: tags.semver: semver range '>=16 <<17' does not parse"),
    ("images:\n  - source: node\n    tags: {newest: 0}\n",
     "mirrors.yml:3:20: tags.newest: newest must be 1 or more, not 0"),
    ("images:\n  - source: node\n    tags: {newest: -2}\n",
     "mirrors.yml:3:20: tags.newest: newest must be 1 or more, not -2"),
    ("images:\n  - source: node\n    tags: {newest: three}\n",
     "mirrors.yml:3:20: tags.newest must be a whole number"),
    ("images:\n  - source: node\n    tags: {semver: }\n",
     "mirrors.yml:3:19: tags.semver must be a non-empty string"),
    ("images:\n  - source: node\n    tags: {}\n",
     "mirrors.yml:3:11: tags is empty"),
    ("images:\n  - source: node\n    tags: every\n",
     "mirrors.yml:3:11: tags must be 'all' or a mapping"),
    ("images:\n  - source: node\n    tags: {sem: 1}\n",
     "mirrors.yml:3:12: unknown key 'sem' in tags"),
    ("images:\n  - source: node:16\n    tags: all\n",
     "mirrors.yml:2:13: with 'tags:', the source names a repository: drop ':16'"),
    ("images:\n  - source: node\n    destination: r.example.com/node:16\n    tags: all\n",
     "mirrors.yml:3:18: with 'tags:', the destination names a repository"),
])
def test_bad_tag_rules_point_at_the_mistake(text: str, expected: str) -> None:
    assert expected in error_of(text)


def test_bad_rules_reported_together_and_nothing_returned() -> None:
    message = error_of("images:\n"
                       "  - source: a\n    tags: {regex: '['}\n"
                       "  - source: b\n    tags: {semver: 'x y'}\n"
                       "  - source: c\n    tags: {newest: 0}\n")
    assert "3 problems" in message
    assert [line.strip().split(": ")[0] for line in message.splitlines()[1:4]] == [
        "mirrors.yml:3:20", "mirrors.yml:5:20", "mirrors.yml:7:20"]


def test_tag_set_destination_repository_must_be_its_own() -> None:
    message = error_of("destination: r.example.com/m\nimages:\n"
                       "  - source: node\n    tags: all\n"
                       "  - source: quay.io/x/node\n    destination: r.example.com/m/library/node\n"
                       "    tags: all\n", {})
    assert "mirrors.yml:5:5: destination repository r.example.com/m/library/node also receives " \
           "docker.io/library/node (entry at line 3)" in message
    # the same source as a set and a single tag is fine (the expansion mirrors the tag once)
    config = parse("images:\n  - node:16\n  - source: node\n    tags: all\n")
    assert len(config.images) == 1 and len(config.tag_sets) == 1
    # a single tag from another source into a set's repository is not
    assert "also receives" in error_of("destination: r.example.com/m\nimages:\n"
                                       "  - source: node\n    tags: all\n"
                                       "  - source: quay.io/x/node:1\n"
                                       "    destination: r.example.com/m/library/node:1\n", {})


def test_lint_mode_tag_set_with_unset_destination() -> None:
    config = parse("images:\n  - source: node\n    tags: all\n", {}, require_destination=False)
    assert config.tag_sets[0].destination is None
    assert config.tag_sets[0].destination_text == "${REGISTRY}/mirror/library/node"
    assert config.tag_sets[0].image("16").destination_text == "${REGISTRY}/mirror/library/node:16"


def test_mirrored_lookup_through_tag_sets() -> None:
    config = parse("images:\n  - source: node\n    tags: {semver: '^16'}\n")
    found = config.mirrored(parse_reference("docker.io/node:16.2.0"))
    assert found is not None and str(found.source) == "docker.io/library/node:16.2.0"
    assert found.position.line == 2
    assert config.mirrored(parse_reference("node:17.0.0")) is None
    assert config.mirrored(parse_reference(f"node@{PIN}")) is None


# -- Docker Hub names: one normalisation (kiln.registry.reference) ----------------------------

@pytest.mark.parametrize("spelling", [
    "alpine", "docker.io/alpine", "index.docker.io/alpine", "registry-1.docker.io/alpine",
    "docker.io/library/alpine", "index.docker.io/library/alpine", "library/alpine"])
def test_docker_hub_spellings_are_one_image(spelling: str) -> None:
    assert str(parse_reference(spelling + ":3")) == "docker.io/library/alpine:3"
    config = parse(f"images: ['{spelling}:3']\n")
    assert str(config.images[0].source) == "docker.io/library/alpine:3"


def test_normalize_keeps_other_registries() -> None:
    from kiln.registry.reference import ImageRef, normalize

    assert normalize(ImageRef("quay.io", "alpine", "3")) == ImageRef("quay.io", "alpine", "3")
    assert normalize(ImageRef("docker.io", "alpine")) == ImageRef("docker.io", "library/alpine")
    assert str(parse_reference("docker.io/bitnami/redis:7")) == "docker.io/bitnami/redis:7"


# -- signatures: mirror the artifacts that refer to an image -----------------------------------

def test_signatures_default_off_top_level_default_and_per_entry_override() -> None:
    config = parse("images:\n  - postgres:alpine\n  - source: node\n    tags: all\n")
    assert config.signatures is False
    assert [i.signatures for i in config.images] == [False]
    assert [s.signatures for s in config.tag_sets] == [False]
    config = parse("signatures: true\n"
                   "images:\n"
                   "  - postgres:alpine\n"
                   "  - source: redis:7\n"
                   "    signatures: false\n"
                   "  - source: node\n"
                   "    tags: {newest: 2}\n")
    assert config.signatures is True
    assert [i.signatures for i in config.images] == [True, False]
    (node,) = config.tag_sets
    assert node.signatures is True and node.image("20").signatures is True
    config = parse("images:\n  - source: quay.io/org/tool\n    tags: all\n    signatures: yes\n")
    assert config.tag_sets[0].image("1").signatures is True


def test_signatures_must_be_a_boolean_at_its_position() -> None:
    text = ("signatures: sometimes\n"
            "images:\n"
            "  - source: redis:7\n"
            "    signatures: 1\n"
            "  - source: node\n"
            "    tags: all\n"
            "    signature: true\n")
    message = error_of(text)
    assert "mirrors.yml:1:13: signatures must be true or false" in message
    assert "mirrors.yml:4:17: signatures must be true or false" in message
    assert "mirrors.yml:7:5: unknown key 'signature' in image entry (did you mean " \
        "'signatures'?)" in message


def test_repository_example_mirrors_no_signatures_by_default() -> None:
    config = load_config(Path(__file__).resolve().parent.parent / "mirrors.yml", VARS)
    assert config.signatures is False
