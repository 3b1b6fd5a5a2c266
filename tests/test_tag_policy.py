"""The tag table of docs/tags.md as a pure function: every combination of pipeline state."""

from __future__ import annotations

import itertools
import re

import pytest

from kiln.ci_context import CIContext
from kiln.errors import InputError
from kiln.tag_policy import (
    arch_tag,
    git_tag_as_image_tag,
    mr_tag,
    source_tag,
    tags_for,
)

pytestmark = pytest.mark.usefixtures("no_subprocess")

PIPELINES = ["123", "local"]
BRANCHES = [None, "main", "feature/x"]  # default branch is "main"
GIT_TAGS = [None, "v1.2.3", "release_2024.01"]
MRS = [None, "7"]


def _ci(pipeline: str, branch: str | None, git_tag: str | None, mr: str | None) -> CIContext:
    """The context :meth:`CIContext.from_env` builds from these GitLab variables."""
    env = {"CI_DEFAULT_BRANCH": "main", "CI_COMMIT_BRANCH": branch or "",
           "CI_COMMIT_TAG": git_tag or "", "CI_MERGE_REQUEST_IID": mr or ""}
    if pipeline != "local":
        env |= {"CI": "true", "CI_PIPELINE_ID": pipeline}
    return CIContext.from_env(env)


@pytest.mark.parametrize(
    ("pipeline", "branch", "git_tag", "mr"),
    list(itertools.product(PIPELINES, BRANCHES, GIT_TAGS, MRS)),
)
def test_every_combination(pipeline: str, branch: str | None, git_tag: str | None,
                           mr: str | None) -> None:
    tags = tags_for(_ci(pipeline, branch, git_tag, mr))
    # Each row of the table, checked independently.
    assert tags[0] == f"g-{pipeline}"
    assert ("latest" in tags) == (branch == "main")
    assert (git_tag in tags) == (git_tag is not None)
    assert (f"mr-{mr}" in tags) == (mr is not None)
    assert "production" not in tags  # only deploy-production writes it
    assert len(tags) == len(set(tags)) == 1 + (branch == "main") + (git_tag is not None) + (
        mr is not None)
    assert not any(t.startswith("p-") for t in tags)


def test_examples() -> None:
    assert tags_for(_ci("100", "main", None, None)) == ("g-100", "latest")
    assert tags_for(_ci("101", None, "v2.0", None)) == ("g-101", "v2.0")
    assert tags_for(_ci("102", None, None, "7")) == ("g-102", "mr-7")
    assert tags_for(_ci("103", "feature", None, None)) == ("g-103",)


def test_default_branch_unknown_means_no_latest() -> None:
    ci = CIContext(pipeline_id="5", commit_branch="main", default_branch=None)
    assert tags_for(ci) == ("g-5",)


@pytest.mark.parametrize("bad", ["feature/x", "v1.0+build", ".hidden", "-dash", "a b",
                                 "x" * 129, "ümlaut", ""])
def test_invalid_git_tag_is_a_clear_error(bad: str) -> None:
    if bad == "":
        # An empty CI_COMMIT_TAG means "not a tag pipeline".
        assert tags_for(_ci("1", None, bad or None, None)) == ("g-1",)
        return
    with pytest.raises(InputError) as info:
        tags_for(_ci("1", None, bad, None))
    assert repr(bad) in str(info.value)
    assert "rename the git tag" in str(info.value)


@pytest.mark.parametrize("reserved", ["production", "latest", "p-123", "g-5", "mr-7",
                                      "p-123-arm64"])
def test_git_tag_colliding_with_kiln_tags_is_refused(reserved: str) -> None:
    with pytest.raises(InputError, match="collides"):
        git_tag_as_image_tag(reserved)


@pytest.mark.parametrize("good", ["v1", "1.0.0", "release-2024_01", "A" * 128, "_x"])
def test_valid_git_tags(good: str) -> None:
    assert git_tag_as_image_tag(good) == good


def test_source_and_arch_tags() -> None:
    ci = CIContext(pipeline_id="42")
    assert source_tag(ci) == "p-42"
    assert arch_tag(ci, "aarch64") == "p-42-arm64"
    assert source_tag(CIContext()) == "p-local"
    with pytest.raises(InputError):
        arch_tag(ci, "mips")
    with pytest.raises(InputError, match="pipeline id"):
        source_tag(CIContext(pipeline_id="1/2"))


def test_mr_tag() -> None:
    assert mr_tag("7") == "mr-7"
    with pytest.raises(InputError, match="CI_MERGE_REQUEST_IID"):
        mr_tag(None)
    with pytest.raises(InputError, match="invalid merge request"):
        mr_tag("7; rm -rf /")


# -- p-<id>[-<arch>] has one home ------------------------------------------------------------------

def test_pipeline_tag_and_reference() -> None:
    from kiln.tag_policy import pipeline_image_ref, pipeline_tag

    assert pipeline_tag("123") == "p-123" == source_tag(_ci("123", None, None, None))
    assert pipeline_tag("123", "aarch64") == "p-123-arm64"
    assert arch_tag(_ci("9", None, None, None), "x86_64") == "p-9-amd64"
    assert pipeline_image_ref("reg.example/g/", "app", "local", "arm64") == \
        "reg.example/g/app:p-local-arm64"
    for bad in ("12 3", "12/34", "", "-1", "x" * 102):
        with pytest.raises(InputError, match="invalid pipeline id"):
            pipeline_tag(bad)


def test_build_names_pipeline_tags_through_tag_policy() -> None:
    """The build engine and the registry tasks use the same function: one regex, one spelling."""
    from kiln import build, tag_policy

    assert build.pipeline_tag is tag_policy.pipeline_tag
    assert build.image_ref is tag_policy.pipeline_image_ref


def test_no_other_module_spells_a_pipeline_tag() -> None:
    """``p-<id>`` is written only in kiln.tag_policy (a second spelling once had its own regex)."""
    from pathlib import Path

    import kiln

    spelled = re.compile(r"""f["']p-\{|["']p-["']\s*\+|["']p-%s""")
    offenders = [str(path) for path in Path(kiln.__file__).parent.rglob("*.py")
                 if path.name != "tag_policy.py" and spelled.search(path.read_text("utf-8"))]
    assert offenders == []


# -- no policy that a pipeline cannot reach ----------------------------------------------------

def test_every_context_field_comes_from_the_environment() -> None:
    """Each field of CIContext that the tag policy may read is set by ``from_env``: a field no
    variable sets (``pipeline_succeeded`` once) makes a branch of the policy that no pipeline
    can reach, tested for nothing."""
    import dataclasses

    env = {"CI": "true", "CI_PIPELINE_ID": "77", "CI_COMMIT_BRANCH": "feature",
           "CI_DEFAULT_BRANCH": "main", "CI_COMMIT_TAG": "v9", "CI_MERGE_REQUEST_IID": "3",
           "CI_PROJECT_NAME": "proj", "CI_JOB_NAME": "job", "CI_PROJECT_URL": "https://x/g/p",
           "CI_COMMIT_SHA": "a" * 40, "CI_REGISTRY": "reg.example",
           "CI_REGISTRY_IMAGE": "reg.example/g/p", "CI_REGISTRY_USER": "ci-user"}
    default, from_env = CIContext(), CIContext.from_env(env)
    unset = [f.name for f in dataclasses.fields(CIContext)
             if getattr(from_env, f.name) == getattr(default, f.name)]
    assert unset == [], f"CIContext fields no environment variable sets: {unset}"


def test_a_failed_pipeline_gets_no_tag_because_the_tag_job_runs_on_success_only() -> None:
    """docs/tags.md: "a failed pipeline writes no g-, latest, git-tag or mr- tag". GitLab holds
    that, not tags_for: the ``.tag`` job's every rule is ``on_success`` or ``never``."""
    from pathlib import Path

    import yaml

    templates = yaml.safe_load((Path(__file__).parent.parent / "ci" / "kiln.yml").read_text())
    rules = templates[".tag"]["rules"]
    assert rules and {rule.get("when", "on_success") for rule in rules} <= {"on_success", "never"}
    assert templates[".tag"]["stage"] == "tag"
    stages = templates["stages"]
    assert stages.index("test") < stages.index("tag")
