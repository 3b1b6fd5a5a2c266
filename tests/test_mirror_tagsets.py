"""Tag sets: which tags each rule selects and why, and how sets expand into images (pure).

The registry side (listing tags, mirroring what is selected) is in test_mirror_real.py.
"""

from __future__ import annotations

import pytest

from kiln.mirror.config import MirrorConfig, parse_config
from kiln.mirror.plan import (
    Action,
    ProbeError,
    children_to_fetch,
    describe_selection,
    expand_tag_sets,
    plan_image,
    wanted_digest,
)
from kiln.mirror.tagsets import RuleError, TagRule, is_version
from kiln.registry.media import DOCKER_MANIFEST, ManifestInfo

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64

NODE_TAGS = ["15.14.0", "16", "16.2", "16.2.0", "16.2.0-rc.1", "16.10.1", "16.3.0-alpine",
             "16.9.0", "17.0.0", "latest", "v16.4.0", "lts"]


def test_is_version_is_strict_semver() -> None:
    assert is_version("16.2.0") and is_version("v16.2.0") and is_version("1.0.0-rc.1+b5")
    assert not any(is_version(t) for t in ("16", "16.2", "latest", "16.02.0", "=16.2.0"))


def test_semver_range_ignores_non_semver_and_prereleases() -> None:
    selection = TagRule.build(semver=">=16 <17").select(NODE_TAGS)
    assert selection.selected == ("16.2.0", "16.10.1", "16.9.0", "v16.4.0")  # listing order
    assert selection.dropped["16"] == "not a semver version"
    assert selection.dropped["latest"] == "not a semver version"
    assert selection.dropped["17.0.0"] == "outside the semver range '>=16 <17'"
    assert "pre-release" in selection.dropped["16.2.0-rc.1"]
    assert "pre-release" in selection.dropped["16.3.0-alpine"]
    assert selection.reasons["16.9.0"] == "in semver range '>=16 <17'"
    assert selection.listed == len(NODE_TAGS)


@pytest.mark.parametrize(("text", "expected"), [
    ("^16", {"16.2.0", "16.10.1", "16.9.0", "v16.4.0"}),
    ("16.x", {"16.2.0", "16.10.1", "16.9.0", "v16.4.0"}),
    ("~16.2", {"16.2.0"}),
    ("16.2.0 - 16.9", {"16.2.0", "16.9.0", "v16.4.0"}),
    ("<16 || >=17", {"15.14.0", "17.0.0"}),
    (">=16.2.0-rc.0 <16.3", {"16.2.0", "16.2.0-rc.1"}),  # names a pre-release of 16.2.0
])
def test_npm_range_grammar(text: str, expected: set[str]) -> None:
    assert set(TagRule.build(semver=text).select(NODE_TAGS).selected) == expected


def test_regex_allows_and_exclude_drops() -> None:
    rule = TagRule.build(regex=[r"^16\.", "^lts$"], exclude=["-rc", "alpine"])
    selection = rule.select(NODE_TAGS)
    assert selection.selected == ("16.2", "16.2.0", "16.10.1", "16.9.0", "lts")
    assert selection.dropped["16.2.0-rc.1"] == "matches exclude '-rc'"
    assert selection.dropped["16"] == r"does not match regex '^16\\.' or '^lts$'"
    assert selection.reasons["lts"] == "matches regex, not excluded"


def test_regex_searches_like_skopeo() -> None:
    # unanchored: like Go's regexp.MatchString in skopeo's images-by-tag-regex
    assert TagRule.build(regex=["alpine"]).select(NODE_TAGS).selected == ("16.3.0-alpine",)


def test_newest_by_semver_order() -> None:
    selection = TagRule.build(semver=">=16 <17", newest=2).select(NODE_TAGS)
    assert selection.selected == ("16.10.1", "16.9.0")
    assert selection.order == "semver order"
    assert selection.reasons["16.10.1"].endswith("newest 2 by semver order (#1)")
    assert selection.dropped["v16.4.0"] == "older than the newest 2 by semver order (#3)"
    assert "2 of 12 tags (semver '>=16 <17', newest 2); newest by semver order" == \
        selection.summary()


def test_newest_by_tag_list_order_when_not_all_are_versions() -> None:
    tags = ["20240101", "20240301", "20240201", "stable"]
    selection = TagRule.build(exclude=["stable"], newest=2).select(tags)
    # no tag is semver: the last 2 of the listing
    assert selection.selected == ("20240301", "20240201")
    assert selection.order.startswith("tag list order ('20240101' is not a semver version)")
    mixed = TagRule.build(newest=1).select(["1.0.0", "2.0.0", "edge"])
    assert mixed.selected == ("edge",)


def test_all_tags_and_duplicates_in_listing() -> None:
    rule = TagRule.everything()
    assert rule.selects_all and rule.describe() == "all tags"
    selection = rule.select(["a", "b", "a"])
    assert selection.selected == ("a", "b") and selection.listed == 2
    assert selection.reasons["a"] == "every tag"


def test_admits_ignores_newest() -> None:
    rule = TagRule.build(semver="^16", newest=1)
    assert rule.admits("16.2.0") and not rule.admits("17.0.0") and not rule.admits("16")


@pytest.mark.parametrize(("parts", "part", "fragment"), [
    ({"regex": ["("]}, "regex", "does not compile: missing ), unterminated subpattern at character 1"),
    ({"exclude": ["ok", "[z"]}, "exclude", "unterminated character set"),
    ({"semver": ">=16 <<17"}, "semver", "does not parse"),
    ({"semver": "sixteen"}, "semver", "does not parse"),
    ({"semver": " "}, "semver", "semver range is empty"),
    ({"newest": 0}, "newest", "newest must be 1 or more, not 0"),
    ({"newest": -3}, "newest", "newest must be 1 or more, not -3"),
    ({"regex": [""]}, "regex", "regex pattern is empty"),
])
def test_bad_rules(parts: dict[str, object], part: str, fragment: str) -> None:
    with pytest.raises(RuleError) as info:
        TagRule.build(**parts)  # type: ignore[arg-type]
    assert info.value.part == part and fragment in info.value.message
    if part == "exclude":
        assert info.value.item == 1 and info.value.offset == 0


def test_dropped_by_reason_groups() -> None:
    selection = TagRule.build(semver="^16").select(NODE_TAGS)
    groups = dict(selection.dropped_by_reason())
    assert groups["not a semver version"] == ["16", "16.2", "latest", "lts"]
    assert sorted(groups["outside the semver range '^16'"]) == ["15.14.0", "17.0.0"]


# -- expansion into images -------------------------------------------------------------------

VARS = {"REGISTRY": "dst.example.com"}


def config(text: str) -> MirrorConfig:
    return parse_config(text, "mirrors.yml", VARS)


def test_expansion_in_file_order_with_dedupe() -> None:
    conf = config("images:\n"
                  "  - alpine:3\n"
                  "  - source: node\n"
                  "    tags: {semver: '^16', newest: 2}\n"
                  "  - node:16.10.1\n")
    expansion = expand_tag_sets(conf, {0: NODE_TAGS})
    assert [str(i.source) for i in expansion.images] == [
        "docker.io/library/alpine:3", "docker.io/library/node:16.9.0",
        "docker.io/library/node:16.10.1"]
    result, = expansion.sets
    # the fixed entry (line 5) mirrors 16.10.1 itself; the set does not copy it twice
    assert result.already == ("16.10.1",) and not result.failed
    image = expansion.images[1]
    assert str(image.destination) == "dst.example.com/mirror/library/node:16.9.0"
    assert image.selected_by.endswith("newest 2 by semver order (#2)")
    assert image.position.line == 3


def test_expansion_errors_are_per_set() -> None:
    conf = config("images:\n"
                  "  - source: node\n    tags: all\n"
                  "  - source: quay.io/org/app\n    tags: {regex: '^v'}\n")
    expansion = expand_tag_sets(conf, {0: ProbeError("401 unauthorized", 3), 1: ["v1", "x"]})
    failed, ok = expansion.sets
    assert failed.failed and failed.exit_code == 3 and "cannot list the tags" in str(failed.error)
    assert [str(i.source) for i in expansion.images] == ["quay.io/org/app:v1"]
    assert ok.selection is not None and ok.selection.selected == ("v1",)
    assert expansion.failures == [failed]


def test_empty_selection_warns() -> None:
    conf = config("images:\n  - source: node\n    tags: {semver: '^99'}\n")
    result, = expand_tag_sets(conf, {0: NODE_TAGS}).sets
    assert not result.failed and "selects none of the 12 tags" in result.warnings[0]


def test_describe_selection_for_the_dry_run() -> None:
    conf = config("images:\n  - source: node\n    tags: {semver: '>=16 <17', newest: 1}\n")
    lines = describe_selection(expand_tag_sets(conf, {0: NODE_TAGS}).sets[0], limit=2)
    assert lines[0] == ("docker.io/library/node (line 2): 1 of 12 tags (semver '>=16 <17', "
                        "newest 1); newest by semver order")
    assert lines[1] == "  + 16.10.1: in semver range '>=16 <17'; newest 1 by semver order (#1)"
    assert "  - 4 not a semver version: 16, 16.2, ... (2 more)" in lines


# -- retag and partial index updates --------------------------------------------------------

def head(digest: str) -> ManifestInfo:
    return ManifestInfo(digest, DOCKER_MANIFEST, 500)


def test_digest_already_in_destination_is_retagged() -> None:
    image = config("images: [node:16.10.1]\n").images[0]
    plan = plan_image(image, head(A), None, destination_digest=head(A))
    assert plan.action is Action.RETAG and plan.pulls == 0 and plan.digest == A
    assert "already (another tag)" in plan.reason
    # without it (or with another digest) it is a copy, and an equal tag still skips
    assert plan_image(image, head(A), None, destination_digest=None).action is Action.COPY
    assert plan_image(image, head(A), head(B), destination_digest=head(B)).action is Action.COPY
    assert plan_image(image, head(A), head(A), destination_digest=head(A)).action is Action.SKIP
    assert wanted_digest(image, head(A)) == A and wanted_digest(image, None) is None


def test_pinned_digest_elsewhere_in_destination_is_retagged() -> None:
    image = config(f"images: ['debian:bookworm@{A}']\n").images[0]
    plan = plan_image(image, head(B), head(C), source_pinned=head(A), destination_digest=head(A))
    assert plan.action is Action.RETAG and plan.digest == A
    assert wanted_digest(image, head(B), head(A)) == A
    assert wanted_digest(image, head(B), None) is None


def test_children_to_fetch_only_missing() -> None:
    update = children_to_fetch([A, B, C, A], {A: head(A), B: None, C: ProbeError("500")})
    assert update.fetch == (B, C) and update.present == (A,)
    assert update.pulls == 3  # the index and two children
    assert children_to_fetch([A], {A: head(A)}).pulls == 1
