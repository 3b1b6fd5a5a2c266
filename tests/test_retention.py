"""The retention policy and prune plan (kiln.retention): pure, plain values in and out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kiln.errors import ConfigError, InputError
from kiln.referrers import cosign_tags, fallback_tag
from kiln.retention import (
    ImageFacts,
    Policy,
    RepositoryState,
    parse_age,
    parse_keep,
    plan_prune,
    removal_steps,
    resolve_policy,
    table_line,
)

NOW = datetime(2026, 6, 1, tzinfo=UTC)
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def digest(n: int | str) -> str:
    return "sha256:" + str(n).rjust(64, "0")[-64:].replace(" ", "0")


def image(n: int | str, days_old: float, **extra: object) -> ImageFacts:
    return ImageFacts(digest(n), MANIFEST, NOW - timedelta(days=days_old), 100, ("amd64",),
                      **extra)  # type: ignore[arg-type]


def state(tags: dict[str, str], *images: ImageFacts) -> RepositoryState:
    return RepositoryState("reg/app", tags, {i.digest: i for i in images})


def decided(plan: object) -> dict[str, str]:
    return {d.tag: d.action for d in plan.decisions}  # type: ignore[attr-defined]


def pipelines(count: int, *, age_step: float = 10.0) -> tuple[dict[str, str], list[ImageFacts]]:
    """p-<n> and g-<n> on one digest each, pipeline n older the smaller n is."""
    tags, images = {}, []
    for n in range(1, count + 1):
        images.append(image(n, (count - n + 1) * age_step))
        tags[f"p-{n}"] = tags[f"g-{n}"] = digest(n)
    return tags, images


# -- policy --------------------------------------------------------------------------------------

def test_ages_and_counts() -> None:
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age("2w") == timedelta(weeks=2)
    assert parse_age(" 12h ") == timedelta(hours=12)
    with pytest.raises(ValueError, match="not an age"):
        parse_age("30 days")
    assert parse_keep(3) == 3 and parse_keep("0") == 0
    for bad in ("-1", "x", True, "1.5"):
        with pytest.raises(ValueError):
            parse_keep(bad)


def test_flags_override_the_image_table_which_overrides_the_settings() -> None:
    defaults = {"match": ("p-*", "g-*"), "keep": "10", "older-than": "30d", "keep-tags": ("v*",)}
    policy = resolve_policy(defaults=defaults, table={"keep": 3, "match": ["mr-*"]},
                            table_name="tool.kiln.images.app.prune",
                            flags={"older-than": "2d", "keep-tags": ["stable"],
                                   "open-mrs": ["!7"]})
    assert policy.match == ("mr-*",) and policy.keep == 3
    assert policy.older_than == timedelta(days=2)
    assert policy.keep_tags == ("v*", "stable") and policy.open_mrs == ("7",)
    assert resolve_policy(defaults=defaults, flags={"keep": "1", "match": ["p-*"]}).keep == 1


def test_a_bad_value_in_the_image_table_names_file_and_line() -> None:
    text = ('[tool.kiln]\nregistry = "x"\n\n[tool.kiln.images.app.prune]\nmatch = ["p-*"]\n'
            'older-than = "30 days"\n')
    with pytest.raises(ConfigError) as err:
        resolve_policy(defaults={}, table={"match": ["p-*"], "older-than": "30 days"},
                       table_name="tool.kiln.images.app.prune", file_text=text,
                       file_name="/p/pyproject.toml")
    assert "/p/pyproject.toml:6:" in str(err.value) and "older-than" in str(err.value)
    with pytest.raises(ConfigError, match=r"pyproject.toml:5: .*unknown keys \['keeep'\]"):
        resolve_policy(defaults={}, table={"keeep": 1},
                       table_name="tool.kiln.images.app.prune",
                       file_text=text.replace("match", "keeep"))
    inline = '[tool.kiln.images.app]\nprivate = true\nprune = {keep = "x"}\n'
    assert table_line(inline, "tool.kiln.images.app.prune", "keep") == 3


def test_a_bad_flag_is_an_input_error() -> None:
    with pytest.raises(InputError, match="not a whole number"):
        resolve_policy(defaults={}, flags={"keep": "many"})
    with pytest.raises(InputError, match="not a merge request iid"):
        resolve_policy(defaults={}, flags={"open-mrs": ["seven"]})


# -- the plan --------------------------------------------------------------------------------------

def test_keeps_the_newest_pipelines_and_the_young_ones() -> None:
    tags, images = pipelines(6)  # ages: p-1 60d ... p-6 10d
    plan = plan_prune(state(tags, *images), Policy(keep=2, older_than=parse_age("35d")), NOW)
    actions = decided(plan)
    assert [t for t, a in actions.items() if a == "keep"] == ["g-6", "p-6", "g-5", "p-5",
                                                              "g-4", "p-4"]
    why = {d.tag: d.why for d in plan.decisions}
    assert why["p-6"].startswith("newest 2 of p-*") and why["p-4"] == "younger than 5w"
    assert "older than" in why["p-1"]
    assert set(plan.delete) == {digest(n) for n in (1, 2, 3)}


def test_pipelines_rank_by_number_not_by_age() -> None:
    images = [image(1, 1), image(2, 90), image(3, 80)]  # pipeline 1 rebuilt yesterday
    tags = {"p-1": digest(1), "p-2": digest(2), "p-3": digest(3)}
    plan = plan_prune(state(tags, *images), Policy(keep=1, older_than=timedelta(0)), NOW)
    assert decided(plan) == {"p-3": "keep", "p-2": "remove", "p-1": "remove"}


def test_per_arch_tags_belong_to_their_pipeline() -> None:
    index = ImageFacts(digest("i2"), INDEX, NOW - timedelta(days=99), 0, ("amd64", "arm64"),
                       children=(digest("a2"), digest("b2")))
    old_index = ImageFacts(digest("i1"), INDEX, NOW - timedelta(days=200), 0, (),
                           children=(digest("a1"), digest("b1")))
    images = [index, old_index, *(image(x, 99) for x in ("a2", "b2")),
              *(image(x, 200) for x in ("a1", "b1"))]
    tags = {"p-2": digest("i2"), "p-2-amd64": digest("a2"), "p-2-arm64": digest("b2"),
            "p-1": digest("i1"), "p-1-amd64": digest("a1"), "p-1-arm64": digest("b1")}
    plan = plan_prune(state(tags, *images), Policy(match=("p-*",), keep=1), NOW)
    assert decided(plan) == {"p-2": "keep", "p-2-amd64": "keep", "p-2-arm64": "keep",
                             "p-1": "remove", "p-1-amd64": "remove", "p-1-arm64": "remove"}
    assert plan.delete[-1] == digest("i1")  # the children before their index
    assert set(plan.delete) == {digest("i1"), digest("a1"), digest("b1")}


def test_never_touches_production_latest_git_tags_and_open_merge_requests() -> None:
    tags, images = pipelines(3, age_step=100)
    images.append(image("m7", 300))
    images.append(image("m8", 300))
    tags.update({"production": digest(1), "latest": digest(2), "v1.2.0": digest(1),
                 "mr-7": digest("m7"), "mr-8": digest("m8"), "nightly": digest(2)})
    policy = Policy(match=("*",), keep=1, older_than=timedelta(0), open_mrs=("7",))
    plan = plan_prune(state(tags, *images), policy, NOW)
    actions = decided(plan)
    for kept in ("production", "latest", "v1.2.0", "mr-7", "nightly", "p-3", "g-3"):
        assert actions[kept] == "keep", kept
    assert actions["mr-8"] == "remove" and actions["p-1"] == "remove"
    why = {d.tag: d.why for d in plan.decisions}
    assert why["v1.2.0"] == "not a tag kiln writes (git tag or other)"
    assert why["mr-7"] == "open merge request"
    # p-1 goes, but its digest stays: production and v1.2.0 still point at it
    assert digest(1) not in plan.delete and "digest stays (also production, v1.2.0)" in why["p-1"]
    assert digest(2) not in plan.delete  # latest
    assert plan.delete == (digest("m8"),)


def test_a_sibling_of_a_kept_tag_goes_alone() -> None:
    tags = {"p-1": digest(1), "g-1": digest(1), "mr-4": digest(1), "p-2": digest(2)}
    images = (image(1, 100), image(2, 1))
    plan = plan_prune(state(tags, *images),
                      Policy(match=("mr-*",), keep=0, older_than=timedelta(0)), NOW)
    assert decided(plan) == {"p-1": "keep", "g-1": "keep", "mr-4": "remove", "p-2": "keep"}
    assert plan.delete == ()
    throwaway, with_digest = removal_steps(plan, state(tags, *images))
    assert throwaway == ["mr-4"] and with_digest == []


def test_a_digest_a_kept_index_needs_stays() -> None:
    index = ImageFacts(digest("i"), INDEX, NOW, 0, (), children=(digest(1),))
    tags = {"p-1": digest(1), "g-5": digest("i"), "p-5": digest("i")}
    plan = plan_prune(state(tags, index, image(1, 400)),
                      Policy(match=("p-*",), keep=0, older_than=timedelta(0)), NOW)
    actions = decided(plan)
    assert actions["p-1"] == "remove" and actions["g-5"] == "keep"
    assert plan.delete == ()
    assert "needed by a kept index or image" in {d.tag: d.why for d in plan.decisions}["p-1"]


def test_removing_every_tag_is_refused() -> None:
    tags, images = pipelines(3, age_step=100)
    with pytest.raises(InputError, match="would remove every tag of reg/app") as err:
        plan_prune(state(tags, *images), Policy(keep=0, older_than=timedelta(0)), NOW)
    assert "nothing was removed" in str(err.value)


def test_unknown_age_is_kept() -> None:
    tags = {"p-1": digest(1), "p-2": digest(2)}
    images = (ImageFacts(digest(1), MANIFEST), image(2, 1))
    plan = plan_prune(state(tags, *images), Policy(keep=0, older_than=timedelta(0)), NOW)
    assert {d.tag: d.why for d in plan.decisions}["p-1"] == "creation time unknown"


def test_artifact_tags_follow_their_subject() -> None:
    tags, images = pipelines(3, age_step=100)
    signature = ImageFacts(digest("s1"), "application/vnd.oci.image.manifest.v1+json",
                           subject=digest(1))
    kept_sig = ImageFacts(digest("s3"), "application/vnd.oci.image.manifest.v1+json",
                          subject=digest(3))
    fallback = ImageFacts(digest("f1"), INDEX, children=(digest("s1"),))
    tags.update({fallback_tag(digest(1)): digest("f1"), cosign_tags(digest(1))[0]: digest("s1"),
                 cosign_tags(digest(3))[0]: digest("s3")})
    plan = plan_prune(state(tags, *images, signature, kept_sig, fallback),
                      Policy(keep=1, older_than=timedelta(0)), NOW)
    actions = decided(plan)
    assert actions[fallback_tag(digest(1))] == "remove"
    assert actions[cosign_tags(digest(1))[0]] == "remove"
    assert actions[cosign_tags(digest(3))[0]] == "keep"
    order = list(plan.delete)
    # artifacts, then the fallback index, then the image: an interruption never leaves an
    # artifact tag whose image is gone
    assert order.index(digest("s1")) < order.index(digest("f1")) < order.index(digest(1))
    assert digest("s3") not in order


def test_referrers_api_artifacts_go_with_their_subject_only() -> None:
    tags = {"p-1": digest(1), "p-2": digest(2)}
    images = (image(1, 100, referrers=(digest("r1"),)), image(2, 1, referrers=(digest("r2"),)),
              ImageFacts(digest("r1"), MANIFEST, subject=digest(1)),
              ImageFacts(digest("r2"), MANIFEST, subject=digest(2)))
    plan = plan_prune(state(tags, *images), Policy(keep=1, older_than=timedelta(0)), NOW)
    assert set(plan.delete) == {digest(1), digest("r1")}


def test_a_throwaway_leftover_is_finished() -> None:
    tags = {"p-1": digest(1), "mr-3": digest("t")}
    images = (image(1, 1), ImageFacts(digest("t"), MANIFEST, throwaway=True))
    plan = plan_prune(state(tags, *images), Policy(match=("p-*",)), NOW)
    assert decided(plan) == {"p-1": "keep", "mr-3": "remove"}
    assert plan.delete == (digest("t"),)
    assert removal_steps(plan, state(tags, *images)) == ([], ["mr-3"])


def test_tags_removed_with_their_digest_need_no_throwaway() -> None:
    tags, images = pipelines(4, age_step=100)
    tags["mr-9"] = digest(4)
    st = state(tags, *images)
    plan = plan_prune(st, Policy(match=("p-*", "g-*", "mr-*"), keep=1,
                                 older_than=timedelta(0)), NOW)
    throwaway, with_digest = removal_steps(plan, st)
    assert with_digest == ["g-1", "g-2", "g-3", "p-1", "p-2", "p-3"]
    assert throwaway == []  # mr-9 shares p-4's digest and is the newest of mr-*: kept


def test_input_key_tags_follow_their_digest() -> None:
    """A build's k-<hex> reuse key sits on the digest of p-<n>: it neither keeps an old image
    alive nor is removed while a kept tag (a later pipeline that reused it) points there."""
    tags, images = pipelines(3, age_step=100)
    key1, key3 = "k-" + "1" * 32, "k-" + "3" * 32
    tags.update({key1: digest(1), key3: digest(3)})
    plan = plan_prune(state(tags, *images), Policy(keep=1, older_than=timedelta(0)), NOW)
    actions = decided(plan)
    assert actions[key1] == "remove" and actions[key3] == "keep"
    assert digest(1) in plan.delete
    assert {d.tag: d.why for d in plan.decisions}[key1] == "input key of a removed image"


def test_a_tag_pointing_at_nothing_is_cleared_when_the_policy_covers_it() -> None:
    tags, images = pipelines(2)
    st = RepositoryState("reg/app", tags, {i.digest: i for i in images},
                         dangling=("p-0", "production", "nightly"))
    plan = plan_prune(st, Policy(), NOW)
    actions = decided(plan)
    assert actions["p-0"] == "remove" and actions["production"] == "keep"
    assert actions["nightly"] == "keep"
    assert removal_steps(plan, st) == (["p-0"], [])
