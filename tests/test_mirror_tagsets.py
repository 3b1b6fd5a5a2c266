"""Tag sets: which tags each rule selects and why, and how sets expand into images (pure).

The registry side (listing tags, mirroring what is selected) is in test_mirror_real.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.errors import ConfigError
from kiln.mirror.config import MirrorConfig, RateLimitPolicy, parse_config
from kiln.mirror.plan import (
    Action,
    ProbeError,
    children_to_fetch,
    describe_selection,
    expand_tag_sets,
    plan_image,
    wanted_digest,
)
from kiln.mirror.ratelimit import RateLimitGate
from kiln.mirror.run import (
    COPIED,
    RETAGGED,
    SKIPPED,
    MirrorReport,
    format_report,
    load_for_run,
    run_mirror,
)
from kiln.mirror.tagsets import RuleError, TagRule, is_version
from kiln.registry import access
from kiln.registry.media import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    Manifest,
    ManifestInfo,
    RateLimit,
)
from kiln.registry.reference import ImageRef, parse_reference
from kiln.settings import Settings

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


# -- the runner's pull floor, with fakes for the registries (no process, no socket) ------------

class FakeRegistries:
    """Two registries in memory: manifests by (host, repository, reference); counts source GETs
    the way Docker Hub does (manifest GETs at the source host)."""

    def __init__(self) -> None:
        self.manifests: dict[tuple[str, str, str], Manifest] = {}
        self.source_gets: list[str] = []
        self.puts: list[str] = []

    def store(self, host: str, repo: str, manifest: Manifest, *tags: str) -> None:
        for reference in (manifest.digest, *tags):
            self.manifests[(host, repo, reference)] = manifest

    def head(self, ref: ImageRef, reference: str) -> ManifestInfo | None:
        found = self.manifests.get((ref.host, ref.repository, reference))
        return None if found is None else ManifestInfo(found.digest, found.media_type,
                                                       len(found.body))

    def list_tags(self, ref: ImageRef) -> list[str]:
        return sorted({r for h, repo, r in self.manifests
                       if (h, repo) == (ref.host, ref.repository) and ":" not in r})

    def get_manifest(self, ref: ImageRef, reference: str) -> Manifest:
        if ref.host == "src.example.com":
            self.source_gets.append(reference)
        return self.manifests[(ref.host, ref.repository, reference)]

    def put_manifest(self, ref: ImageRef, reference: str, manifest: Manifest) -> str:
        self.puts.append(f"{ref.name}:{reference}")
        self.store(ref.host, ref.repository, manifest, reference)
        return manifest.digest


class FakeCopier:
    """skopeo, as far as the runner can tell: one source GET per manifest copied."""

    def __init__(self, registries: FakeRegistries) -> None:
        self.registries = registries
        self.copies: list[str] = []

    def copy(self, source: ImageRef, destination: ImageRef) -> str:
        assert source.digest is not None and destination.tag is not None
        manifest = self.registries.get_manifest(source, source.digest)
        self.copies.append(source.digest)
        self.registries.store(destination.host, destination.repository, manifest, destination.tag)
        return manifest.digest

    def copy_to(self, source: str, destination: str, what: str) -> str:
        src = parse_reference(source.removeprefix("docker://"))
        dst = parse_reference(destination.removeprefix("docker://"))
        assert src.digest is not None
        manifest = self.registries.get_manifest(src, src.digest)
        self.copies.append(src.digest)
        self.registries.store(dst.host, dst.repository, manifest)
        return manifest.digest


def image_manifest(label: str) -> Manifest:
    return Manifest.from_bytes(json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                                           "config": {"digest": label}}).encode())


def index_manifest(children: list[Manifest]) -> Manifest:
    return Manifest.from_bytes(json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST,
        "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": c.digest, "size": len(c.body)}
                      for c in children]}).encode())


def run_fake(registries: FakeRegistries, text: str, *, remaining: int | None = None,
             floor: int = 0) -> MirrorReport:
    conf = parse_config(text, "mirrors.yml", {"REGISTRY": "dst.example.com"})
    listings = {n: registries.list_tags(s.source) for n, s in enumerate(conf.tag_sets)}
    images = expand_tag_sets(conf, listings).images
    gate = RateLimitGate(RateLimitPolicy(floor=floor))
    if remaining is not None:
        gate.observe("src.example.com", RateLimit(100, remaining, 21600))
    return run_mirror(images, head=registries.head, copier=FakeCopier(registries), gate=gate,
                      jobs=1, registries=registries)


def four_arch(fake: FakeRegistries, changed: str | None = None) -> Manifest:
    children = [image_manifest(arch) for arch in ("amd64", "arm64", "arm", "ppc64le")]
    if changed is not None:
        children[1] = image_manifest(changed)
    for child in children:
        fake.store("src.example.com", "library/multi", child)
    index = index_manifest(children)
    fake.store("src.example.com", "library/multi", index, "latest")
    return index


def test_changed_index_fetches_the_index_and_the_new_child_only() -> None:
    fake = FakeRegistries()
    children = [image_manifest(arch) for arch in ("amd64", "arm64", "arm", "ppc64le")]
    for child in children:
        fake.store("src.example.com", "library/multi", child)
    fake.store("src.example.com", "library/multi", index_manifest(children), "latest")
    text = "images: ['src.example.com/library/multi:latest']\n"
    cold = run_fake(fake, text)
    assert cold.outcomes[0].status == COPIED and cold.pulls() == {"src.example.com": 5}
    changed = [children[0], image_manifest("arm64 v2"), *children[2:]]
    fake.store("src.example.com", "library/multi", changed[1])
    new_index = index_manifest(changed)
    fake.store("src.example.com", "library/multi", new_index, "latest")
    fake.source_gets.clear()
    report = run_fake(fake, text)
    assert fake.source_gets == [new_index.digest, changed[1].digest]  # goal: 2 GETs
    assert report.pulls() == {"src.example.com": 2}
    assert "1 of 4 child manifest(s) fetched, 3 at the destination already" in \
        report.outcomes[0].message
    assert fake.manifests[("dst.example.com", "mirror/library/multi", "latest")] == new_index
    fake.source_gets.clear()
    assert run_fake(fake, text).outcomes[0].status == SKIPPED and fake.source_gets == []


def test_alias_tags_of_one_digest_cost_one_pull() -> None:
    fake = FakeRegistries()
    fake.store("src.example.com", "team/tool", image_manifest("one"), "1.0.0", "stable")
    fake.store("src.example.com", "team/tool", image_manifest("edge"), "edge")
    report = run_fake(fake, "images:\n  - source: src.example.com/team/tool\n    tags: all\n")
    statuses = {o.image.tag: o.status for o in report.outcomes}
    assert statuses == {"1.0.0": COPIED, "edge": COPIED, "stable": RETAGGED}
    assert report.pulls() == {"src.example.com": 2} and len(fake.source_gets) == 2
    assert "dst.example.com/mirror/team/tool:stable" in fake.puts
    text = format_report(report)
    assert "2 copied, 1 retagged" in text
    assert "src.example.com: 2 pulls spent (manifest GETs)" in text


def test_explicit_destinations_need_no_registry(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``invoke mirror -c FILE`` with every destination given must not start (or even look
    for) the embedded registry; a ``${REGISTRY}`` destination does."""
    asked: list[bool] = []

    def target_registry(settings: Settings, *, start: bool = True) -> object:
        asked.append(start)
        raise ConfigError("no registry here")

    monkeypatch.setattr(access, "target_registry", target_registry)
    settings = Settings.resolve(tmp_path, {}, {}, {})
    explicit = tmp_path / "explicit.yml"
    explicit.write_text("images:\n  - source: alpine:3\n    destination: r.example.com/a\n"
                        "  - source: node\n    destination: r.example.com/node\n    tags: all\n")
    loaded = load_for_run(settings, explicit)
    assert [str(i.destination) for i in loaded.images] == ["r.example.com/a:3"]
    assert asked == []
    derived = tmp_path / "derived.yml"
    derived.write_text("images: [alpine:3]\n")
    with pytest.raises(ConfigError, match="unset variable"):
        load_for_run(settings, derived)
    assert asked == [True]


def test_changed_child_reserves_only_what_it_fetches() -> None:
    """13 pulls left, floor 10: the changed child needs 2 and goes (the size-based estimate for
    a 4-arch index, 12, would have stopped it); with 11 left, the index GET fits but the child
    would cross the floor: stopped with the rate-limit message, 1 pull spent."""
    text = "images: ['src.example.com/library/multi:latest']\n"
    for remaining, status in ((13, COPIED), (11, "failed")):
        fake = FakeRegistries()
        four_arch(fake)
        run_fake(fake, text)
        four_arch(fake, changed="arm64 v2")
        fake.source_gets.clear()
        report = run_fake(fake, text, remaining=remaining, floor=10)
        outcome = report.outcomes[0]
        assert outcome.status == status, outcome.message
        if status == "failed":
            assert outcome.exit_code == 4 and "the floor is 10" in outcome.message
            assert report.pulls() == {"src.example.com": 1} and len(fake.source_gets) == 1
        else:
            assert report.pulls() == {"src.example.com": 2}


def test_readme_mirror_benchmark_is_generated_from_the_results() -> None:
    """The README's mirror benchmark section is what ``benchmarks/mirror.py --render`` makes of
    ``benchmarks/results/mirror.json`` (never pasted by hand)."""
    import importlib.util
    import sys

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("mirror_benchmark", root / "benchmarks" /
                                                  "mirror.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mirror_benchmark"] = module
    spec.loader.exec_module(module)
    data = json.loads((root / "benchmarks" / "results" / "mirror.json").read_text())
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme.split(module.START, 1)[1].split(module.END, 1)[0]
    assert section.strip() == module.render(data).strip()
    assert (root / "benchmarks" / "results" / "mirror.md").read_text().strip() == \
        module.render(data).strip()
    changed = [r for r in data["results"]
               if r["scenario"] == "changed child" and r["tool"] == "kiln mirror"
               and r["run"] == "1 child changed"]
    assert changed[0]["manifest_gets"] == 2  # the goal: the index and the new child
