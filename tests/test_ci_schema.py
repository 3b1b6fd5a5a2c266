"""The CI YAML (ci/*.yml, .gitlab-ci.yml) against GitLab's JSON schema, and the templates' shape."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.ci_shims import documented_block
from kiln import ci_schema, nox_sessions
from kiln.errors import InputError

REPO_ROOT = Path(__file__).resolve().parent.parent
CI_FILES = ci_schema.ci_yaml_files(REPO_ROOT)
TEMPLATES = (
    ".publish", ".publish_job", ".manifest", ".tag", ".deploy_production",
    ".deploy_production_image", ".deploy_production_tag", ".deploy_mr", ".deploy_mr_image",
    ".stop_mr", ".stop_mr_image", ".mirror",
)


def _load(path: Path) -> dict[str, Any]:
    data, _ = ci_schema.load_yaml(path.read_text(encoding="utf-8"), str(path))
    assert isinstance(data, dict)
    return data


def _resolved(data: dict[str, Any], name: str) -> dict[str, Any]:
    """A job with its ``extends`` chain merged the way GitLab does (deep merge of mappings)."""
    job, complete = ci_schema.merge_extends(data, name)
    assert complete, f"{name}: an extends target is missing"
    return job


def test_ci_files_found() -> None:
    names = {p.relative_to(REPO_ROOT).as_posix() for p in CI_FILES}
    assert {".gitlab-ci.yml", "ci/kiln.yml", "ci/workflow.yml"} <= names


@pytest.mark.parametrize("path", CI_FILES, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_every_ci_file_validates(path: Path) -> None:
    problems = ci_schema.validate_file(path)
    assert problems == [], "\n".join(map(str, problems))


def test_project_check_resolves_extends() -> None:
    problems = ci_schema.check_project(REPO_ROOT)
    assert problems == [], "\n".join(map(str, problems))


def test_typo_in_hidden_template_is_caught_with_line() -> None:
    text = (REPO_ROOT / "ci" / "kiln.yml").read_text(encoding="utf-8")
    # GitLab's schema alone accepts anything under a hidden key ("arbitrary YAML anchor").
    lines = text.splitlines()
    start = lines.index(".publish:")
    offset = next(i for i, line in enumerate(lines[start:]) if line == "  script:")
    lines[start + offset] = "  scirpt:"
    broken = "\n".join(lines) + "\n"
    problems = ci_schema.validate_text(broken, "kiln.yml")
    assert [(p.location, p.line) for p in problems] == [(".publish.scirpt", start + offset + 1)]
    assert "'scirpt' was unexpected" in problems[0].message
    assert str(problems[0]).startswith(f"kiln.yml:{start + offset + 1}: .publish.scirpt:")


def test_plain_schema_misses_hidden_typo_but_we_do_not() -> None:
    """Why the extra check exists: the vendored schema on its own lets the typo through."""
    import jsonschema  # type: ignore[import-untyped]

    text = ".tpl:\n  stage: build\n  scirpt: [echo]\njob:\n  extends: .tpl\n  script: [echo]\n"
    data = yaml.safe_load(text)
    assert list(jsonschema.Draft7Validator(ci_schema.load_schema()).iter_errors(data)) == []
    assert [p.location for p in ci_schema.validate_text(text)] == [".tpl.scirpt"]


def test_errors_in_real_jobs_name_the_specific_key() -> None:
    text = (
        "job:\n  stage: build\n  script: [a]\n  when: sometimes\n"
        "  environment: {name: x, on_stopp: y}\n"
    )
    found = {(p.location, p.line) for p in ci_schema.validate_text(text, "x.yml")}
    assert found == {("job.when", 4), ("job.environment.on_stopp", 5)}


def test_hidden_anchor_lists_and_references_are_accepted() -> None:
    text = (
        ".rules: &rules\n  - if: $X\n    when: never\n  - when: on_success\n"
        ".base:\n  script: [nox -s tests]\n"
        "job:\n  rules: *rules\n  script:\n    - !reference [.base, script]\n"
    )
    assert ci_schema.validate_text(text) == []


def test_invalid_yaml_is_an_input_error_with_line() -> None:
    with pytest.raises(InputError, match=r"bad\.yml:2"):
        ci_schema.validate_text("a: [1\nb: 2\n", "bad.yml")


def test_dangling_extends_is_reported(tmp_path: Path) -> None:
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "t.yml").write_text(".publish:\n  script: [nox -s publish]\n")
    (tmp_path / ".gitlab-ci.yml").write_text(
        "include:\n  - local: ci/t.yml\n"
        "a:\n  extends: .publish\n"
        "b:\n  extends: [.publish, .pubilsh_job]\n"
    )
    problems = ci_schema.check_project(tmp_path)
    assert [(p.location, p.line) for p in problems] == [("b.extends", 6)]
    assert ".pubilsh_job" in problems[0].message


@pytest.mark.tool
def test_cli_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(".tpl:\n  scirpt: [x]\n")
    result = subprocess.run(
        [sys.executable, "-m", "kiln.ci_schema", str(bad)], capture_output=True, text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert f"{bad}:2: .tpl.scirpt" in result.stderr
    good = subprocess.run(
        [sys.executable, "-m", "kiln.ci_schema"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert good.returncode == 0, good.stderr
    assert "GitLab CI YAML valid" in good.stdout


# --- the templates ------------------------------------------------------------------------------

KILN = _load(REPO_ROOT / "ci" / "kiln.yml")
PIPELINE = _load(REPO_ROOT / ".gitlab-ci.yml")
SESSIONS = {
    "publish", "manifest", "tag", "deploy-production", "deploy-production-tag", "deploy-mr",
    "stop-mr", "mirror", "lint", "tests", "prune",
}


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_script_is_one_nox_session(name: str) -> None:
    job = _resolved(KILN, name)
    script = job["script"]
    assert len(script) == 1 and re.fullmatch(r"nox -s [a-z-]+", script[0]), script
    assert script[0].split()[-1] in SESSIONS


def test_every_job_of_the_pipeline_only_calls_nox() -> None:
    merged = {**KILN, **PIPELINE}
    jobs = [k for k, v in PIPELINE.items() if not k.startswith(".") and isinstance(v, dict)
            and k not in {"include", "variables", "workflow", "stages"}]
    assert len(jobs) >= 15
    for name in jobs:
        job = _resolved(merged, name)
        if "trigger" in job:  # runs a (generated) child pipeline, whose jobs run nox
            assert set(job) <= {"stage", "needs", "rules", "trigger", "variables"}, name
            continue
        script = job["script"]
        assert all(re.fullmatch(r"nox -s [a-z-]+", line) for line in script), (name, script)


def test_sessions_named_by_templates_exist_in_nox() -> None:
    registered = {
        getattr(nox_sessions, attr).name for attr in nox_sessions.__all__  # nox Func objects
    }
    assert SESSIONS <= registered


def test_template_semantics() -> None:
    publish = _resolved(KILN, ".publish")
    assert publish["stage"] == "build"
    assert publish["variables"]["IMAGE_NAME"] == "$CI_PROJECT_NAME"
    assert _resolved(KILN, ".publish_job")["variables"]["IMAGE_NAME"] == "$CI_JOB_NAME"
    assert publish["image"] == "$KILN_CI_IMAGE:$buildah_image_tag"
    assert KILN["variables"]["KILN_CI_IMAGE"] == "$CI_REGISTRY/$KILN_PROJECT_PATH/buildah"
    assert {"BASE_IMAGE_TAG", "buildah_image_tag"} <= set(KILN["variables"])
    stages = KILN["stages"]
    assert stages.index("build") < stages.index("manifest") < stages.index("test")
    assert stages.index("test") < stages.index("tag") <= stages.index("deploy")
    assert _resolved(KILN, ".tag")["stage"] == "tag"

    production = _resolved(KILN, ".deploy_production")
    assert production["environment"]["name"] == "production"
    assert _resolved(KILN, ".deploy_production_image")["environment"]["name"] == (
        "production/$IMAGE_NAME"
    )
    rules = production["rules"]
    assert rules[-2] == {"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH", "when": "on_success"}
    assert rules[-1] == {"when": "manual", "allow_failure": True}

    deploy_mr = _resolved(KILN, ".deploy_mr")
    assert deploy_mr["environment"] == {
        "name": "mr-$CI_MERGE_REQUEST_IID", "on_stop": "stop-mr", "action": "start",
    }
    assert _resolved(KILN, ".deploy_mr_image")["environment"]["name"] == (
        "mr-$CI_MERGE_REQUEST_IID/$IMAGE_NAME"
    )
    # .stop_mr is merged last onto a deploy job: it brings only the stop action and the script,
    # never an image name or environment name that would override the deploy job's.
    assert KILN[".stop_mr"] == {"environment": {"action": "stop"}, "script": ["nox -s stop-mr"]}
    stop = _resolved(KILN, ".stop_mr_image")
    assert stop["environment"] == {"name": "mr-$CI_MERGE_REQUEST_IID/$IMAGE_NAME", "action": "stop"}
    for rules in (deploy_mr["rules"], stop["rules"]):
        assert all(r.get("when") in {"manual", "never"} for r in rules)
        assert any("$CI_MERGE_REQUEST_IID" in r.get("if", "") for r in rules)


def test_changes_rules_use_the_changes_variable() -> None:
    rules = _resolved(KILN, ".publish")["rules"]
    assert rules[0]["if"] == "$CHANGES"
    assert rules[0]["changes"] == ["$CHANGES", "$CHANGES/**/*"]
    assert rules[1] == {"if": "$CHANGES", "when": "never"}
    assert rules[-1] == {"when": "on_success"}


def test_pipeline_stop_jobs_match_their_deploy_jobs() -> None:
    merged = {**KILN, **PIPELINE}
    deploys = [k for k in PIPELINE if k.startswith("deploy-mr-")]
    assert deploys
    for name in deploys:
        deploy = _resolved(merged, name)
        stop_name = deploy["environment"]["on_stop"]
        stop = _resolved(merged, stop_name)
        assert stop["environment"]["action"] == "stop"
        image = deploy["variables"]["IMAGE_NAME"]
        assert stop["variables"]["IMAGE_NAME"] == image
        names = {stop["environment"]["name"], deploy["environment"]["name"]}
        assert {n.replace("$IMAGE_NAME", image) for n in names} == {
            f"mr-$CI_MERGE_REQUEST_IID/{image}"
        }


# --- the documented job patterns (docs/workflow.md), verbatim -----------------------------------


ONE_IMAGE = documented_block("One image per repository")
SEVERAL_IMAGES = documented_block("Several images: a matrix, one MR environment per image")


def _with_templates(text: str) -> dict[str, Any]:
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return {**KILN, **data}


def test_documented_patterns_pass_the_lint() -> None:
    """Issue #11 (5): the lint checked jobs before extends was merged, so the documented
    `deploy-mr: {extends: .deploy_mr, environment: {on_stop: stop-mr}}` lacked environment.name."""
    for text in (ONE_IMAGE, SEVERAL_IMAGES):
        problems = ci_schema.validate_text(text, "consumer.yml", definitions=KILN)
        assert problems == [], "\n".join(map(str, problems))


def test_lint_still_reports_what_the_merged_job_lacks() -> None:
    text = "stop-mr:\n  extends: .stop_mr\n  stage: deploy\n"
    problems = ci_schema.validate_text(text, "c.yml", definitions=KILN)
    assert [(p.location, p.line) for p in problems] == [("stop-mr.environment", 1)]
    assert "'name' is a required property" in problems[0].message
    # a template from a file the lint does not see: what it may give is not asked for
    unseen = "deploy-mr:\n  extends: .from_elsewhere\n  environment: {on_stop: stop-mr}\n"
    assert ci_schema.validate_text(unseen, "c.yml") == []
    typo = "deploy-mr:\n  extends: .from_elsewhere\n  environment: {on_stopp: stop-mr}\n"
    assert [p.location for p in ci_schema.validate_text(typo, "c.yml")] == [
        "deploy-mr.environment.on_stopp"]


def test_project_lint_merges_across_included_files(tmp_path: Path) -> None:
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "kiln.yml").write_text((REPO_ROOT / "ci" / "kiln.yml").read_text())
    (tmp_path / ".gitlab-ci.yml").write_text("include:\n  - local: ci/kiln.yml\n" + ONE_IMAGE)
    assert ci_schema.check_project(tmp_path) == []


def test_documented_stop_job_stops_what_its_deploy_job_started() -> None:
    """Issue #11 (1): .stop_mr brought IMAGE_NAME=$CI_PROJECT_NAME and environment mr-<iid>,
    overriding the deploy job's image and mr-<iid>/backend environment: the stop job removed
    the tag of another image (reported 'absent') and stopped another environment."""
    one = _with_templates(ONE_IMAGE)
    stop = _resolved(one, "stop-mr")
    deploy = _resolved(one, "deploy-mr")
    assert deploy["environment"]["on_stop"] == "stop-mr"
    assert stop["environment"]["name"] == deploy["environment"]["name"] == "mr-$CI_MERGE_REQUEST_IID"
    assert stop["environment"]["action"] == "stop"
    assert stop["script"] == ["nox -s stop-mr"]
    assert stop["variables"] == deploy["variables"]
    assert stop["rules"] == deploy["rules"] and stop["stage"] == deploy["stage"] == "deploy"

    several = _with_templates(SEVERAL_IMAGES)
    deploy = _resolved(several, "deploy-mr-backend")
    stop = _resolved(several, deploy["environment"]["on_stop"])
    assert stop["variables"]["IMAGE_NAME"] == deploy["variables"]["IMAGE_NAME"] == "backend"
    assert stop["environment"]["name"] == "mr-$CI_MERGE_REQUEST_IID/$IMAGE_NAME"
    assert stop["environment"]["action"] == "stop"
    assert stop["script"] == ["nox -s stop-mr"]


@pytest.mark.parametrize(
    ("env", "posargs", "task"),
    [
        ({"IMAGE_ARCHES": "amd64 arm64"}, [], "manifest"),
        ({"IMAGE_ARCHES": "amd64 arm64", "IMAGE_ARCH": "arm64"}, [], "build-arch"),
        ({"IMAGE_ARCHES": "amd64 arm64"}, ["--arch", "arm64"], "build-arch"),
        ({"IMAGE_ARCHES": " "}, [], "build"),
    ],
)
def test_documented_manifest_job_assembles_the_index(env: dict[str, str], posargs: list[str],
                                                     task: str) -> None:
    """Issue #11 (2): the documented manifest job is a .publish_job with IMAGE_ARCHES; publish
    ignored IMAGE_ARCHES and pushed a native single-arch build as p-<id>."""
    assert nox_sessions.task_for_publish(env, posargs) == task
