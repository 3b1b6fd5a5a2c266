"""The generated child pipeline (kiln.ci_graph), from plain graphs: no process, no network.

What GitLab needs from it: one build job per image and architecture, a manifest job per
multi-arch image, ``needs:`` along the graph's edges (so independent images run at the same
time), no job for images the generator copied, exactly one ``nox -s <session>`` per job, the
parent's pipeline id, and YAML that passes GitLab's CI JSON schema and the ``needs:`` check.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kiln import ci_graph, ci_schema, nox_sessions
from kiln.build.graph import ImageGraph, Node
from kiln.ci_context import CIContext
from kiln.ci_graph import Job, plan_child_pipeline, stage_per_level_length
from kiln.errors import InputError

MULTI = ("amd64", "arm64")


def node(image: str, deps: tuple[str, ...] = (), arches: tuple[str, ...] = ("amd64",), *,
         changed: bool = True, reusable: bool = False) -> Node:
    return Node(image, arches, deps, f"builds/{image}.in", key=f"sha256:{image}",
                reusable=reusable, changed=changed)


def graph(*nodes: Node) -> ImageGraph:
    return ImageGraph({n.image: n for n in nodes})


def _sessions() -> set[str]:
    return {getattr(nox_sessions, attr).name for attr in nox_sessions.__all__}


def _document(pipeline: ci_graph.ChildPipeline) -> dict[str, object]:
    data = yaml.safe_load(pipeline.to_yaml())
    assert isinstance(data, dict)
    return data


def test_one_job_per_image_and_arch_and_a_manifest_job_for_multiarch() -> None:
    g = graph(node("base", arches=MULTI), node("python", ("base",), MULTI),
              node("tool", arches=MULTI))
    pipeline = plan_child_pipeline(g, pipeline_id="42")
    assert pipeline.job_names == [
        "build:base:amd64", "build:base:arm64", "manifest:base",
        "build:tool:amd64", "build:tool:arm64", "manifest:tool",
        "build:python:amd64", "build:python:arm64", "manifest:python",
    ]
    arm = pipeline.job("build:python:arm64")
    assert arm.variables == {"IMAGE_NAME": "python", "IMAGE_ARCH": "arm64",
                             "KILN_BASE_IMAGE_TAG": "p-42-arm64"}
    assert arm.needs == ("build:base:arm64",), "an arch job waits only for its own arch"
    manifest = pipeline.job("manifest:python")
    assert manifest.session == "manifest"
    assert manifest.variables == {"IMAGE_NAME": "python", "IMAGE_ARCHES": "amd64 arm64"}
    assert manifest.needs == ("build:python:amd64", "build:python:arm64")
    # independent images start at once: nothing between tool and base/python
    assert pipeline.job("build:tool:amd64").needs == ()
    assert pipeline.job("build:base:amd64").needs == ()


def test_single_arch_images_one_job_each_with_needs_along_edges() -> None:
    g = graph(node("base"), node("python", ("base",)), node("backend", ("python",)),
              node("worker", ("base", "python")), node("busybox"))
    pipeline = plan_child_pipeline(g, pipeline_id="7")
    assert pipeline.job_names == ["build:base", "build:busybox", "build:python",
                                  "build:backend", "build:worker"]
    assert pipeline.job("build:backend").needs == ("build:python",)
    assert pipeline.job("build:worker").needs == ("build:base", "build:python")
    assert pipeline.job("build:worker").variables["KILN_BASE_IMAGE_TAG"] == "p-7"
    assert "KILN_BASE_IMAGE_TAG" not in pipeline.job("build:base").variables
    assert all(j.session == "publish" for j in pipeline.jobs)


def test_copied_multiarch_dependency_gives_per_arch_tags_without_waiting() -> None:
    """The generator copied extra's per-arch tags and index before the child started."""
    g = graph(node("base", arches=MULTI), node("extra", arches=MULTI, changed=False,
                                               reusable=True),
              node("app", ("base", "extra"), MULTI))
    pipeline = plan_child_pipeline(g, pipeline_id="9", copied=["extra"])
    job = pipeline.job("build:app:arm64")
    assert job.variables["KILN_BASE_IMAGE_TAG"] == "p-9-arm64"
    assert job.needs == ("build:base:arm64",)


def test_single_arch_dependency_of_a_single_arch_image_waits_for_its_build() -> None:
    g = graph(node("base", arches=MULTI), node("tool", ("base",)))
    with pytest.raises(InputError):
        plan_child_pipeline(graph(node("base"), node("app", ("base",), MULTI)), pipeline_id="1")
    pipeline = plan_child_pipeline(g, pipeline_id="4")
    assert pipeline.job("build:tool").needs == ("manifest:base",)
    assert pipeline.job("build:tool").variables["KILN_BASE_IMAGE_TAG"] == "p-4"


def test_copied_images_get_no_job_and_their_dependents_do_not_wait() -> None:
    g = graph(node("base", changed=False, reusable=True), node("python", ("base",)),
              node("backend", ("python",), changed=False, reusable=True))
    pipeline = plan_child_pipeline(g, pipeline_id="5", copied=["base", "backend"])
    assert pipeline.job_names == ["build:python"]
    assert pipeline.job("build:python").needs == ()
    assert pipeline.job("build:python").variables["KILN_BASE_IMAGE_TAG"] == "p-5"
    assert pipeline.copied == ("base", "backend")
    assert pipeline.built == ("python",)
    text = pipeline.to_yaml()
    assert "# reused, copied by the generator: base, backend" in text


def test_reused_images_not_copied_get_the_ordinary_jobs() -> None:
    """--no-copy: the build itself turns them into manifest copies."""
    g = graph(node("base", changed=False, reusable=True), node("python", ("base",)))
    pipeline = plan_child_pipeline(g, pipeline_id="5")
    assert pipeline.job_names == ["build:base", "build:python"]
    assert pipeline.job("build:python").needs == ("build:base",)


def test_only_reused_images_can_be_copied() -> None:
    with pytest.raises(InputError, match="only a reused image"):
        plan_child_pipeline(graph(node("base")), pipeline_id="5", copied=["base"])
    with pytest.raises(InputError, match="only a reused image"):
        plan_child_pipeline(graph(node("base")), pipeline_id="5", copied=["nope"])


def test_nothing_to_build_still_gives_gitlab_a_job() -> None:
    g = graph(node("base", changed=False, reusable=True))
    pipeline = plan_child_pipeline(g, pipeline_id="5", copied=["base"])
    assert pipeline.job_names == [ci_graph.UP_TO_DATE_JOB]
    only = pipeline.jobs[0]
    assert only.session == "ci-graph" and only.variables == {"KILN_DRY_RUN": "true"}
    assert ci_graph.check(pipeline) == []


def test_an_image_neither_changed_nor_reusable_is_an_error_naming_its_file() -> None:
    g = graph(node("base", changed=False, reusable=False), node("python", ("base",)))
    with pytest.raises(InputError, match=r"builds/base\.in: base is neither"):
        plan_child_pipeline(g, pipeline_id="5")


def test_arch_missing_in_a_dependency_is_an_error_naming_both_files() -> None:
    g = graph(node("base", arches=("amd64",)), node("python", ("base",), MULTI))
    with pytest.raises(InputError) as raised:
        plan_child_pipeline(g, pipeline_id="5")
    assert "builds/python.in" in raised.value.message and "not arm64" in raised.value.message
    assert "builds/base.in" in (raised.value.hint or "")


def test_every_job_runs_exactly_one_existing_nox_session() -> None:
    g = graph(node("base", arches=MULTI), node("python", ("base",), MULTI), node("solo"))
    document = _document(plan_child_pipeline(g, pipeline_id="42"))
    jobs = {k: v for k, v in document.items() if k not in {"stages", "variables"}}
    assert len(jobs) == 7
    for name, job in jobs.items():
        assert isinstance(job, dict)
        script = job["script"]
        assert len(script) == 1 and re.fullmatch(r"nox -s [a-z-]+", script[0]), (name, script)
        assert script[0].split()[-1] in _sessions()
        assert job["image"] == "$KILN_CI_IMAGE:$buildah_image_tag"


def test_jobs_write_the_parent_pipelines_tags_and_build_only_their_image() -> None:
    document = _document(plan_child_pipeline(graph(node("base")), pipeline_id="1234"))
    assert document["variables"] == {"KILN_PIPELINE_ID": "1234", "KILN_DEPS": "false"}
    # a child pipeline has its own CI_PIPELINE_ID: KILN_PIPELINE_ID must win over it
    env = {"CI": "true", "CI_PIPELINE_ID": "99999", "KILN_PIPELINE_ID": "1234"}
    assert CIContext.from_env(env).pipeline_id == "1234"
    assert CIContext.from_env({"CI_PIPELINE_ID": "99999"}).pipeline_id == "99999"


def test_invalid_pipeline_id_is_an_input_error() -> None:
    with pytest.raises(InputError, match="invalid pipeline id"):
        plan_child_pipeline(graph(node("base")), pipeline_id="1/2")


def test_generated_yaml_passes_gitlabs_schema_and_the_needs_check() -> None:
    g = graph(node("base", arches=MULTI), node("python", ("base",), MULTI),
              node("backend", ("python",), MULTI), node("busybox", arches=MULTI))
    pipeline = plan_child_pipeline(g, pipeline_id="42", job_image="registry.example/ci:1")
    assert ci_graph.check(pipeline) == []
    assert ci_schema.validate_text(pipeline.to_yaml()) == []
    assert _document(pipeline)["build:base:amd64"]["image"] == "registry.example/ci:1"  # type: ignore[index]


def test_needs_check_catches_what_the_schema_lets_through() -> None:
    text = "a: {script: [x], needs: [b]}\nb: {script: [x], needs: [a]}\nc: {script: [x], needs: [zz]}\n"
    assert ci_schema.validate_text(text) == []
    data, lines = ci_schema.load_yaml(text)
    problems = [str(p) for p in ci_schema.check_needs(data, "child.yml", lines)]
    assert any("needs 'zz'" in p and p.startswith("child.yml:3") for p in problems), problems
    assert any("cycle: a -> b -> a" in p for p in problems), problems


def test_output_is_deterministic() -> None:
    nodes = [node("base", arches=MULTI), node("python", ("base",), MULTI), node("solo")]
    first = plan_child_pipeline(graph(*nodes), pipeline_id="3").to_yaml()
    assert plan_child_pipeline(graph(*reversed(nodes)), pipeline_id="3").to_yaml() == first


def test_needs_beat_one_stage_per_level_when_durations_differ() -> None:
    """base -> slow, base -> fast -> top: with stages, top waits for slow (its level's
    slowest); with needs it starts after fast."""
    g = graph(node("base"), node("slow", ("base",)), node("fast", ("base",)),
              node("top", ("fast",)))
    minutes = {"base": 2.0, "slow": 10.0, "fast": 1.0, "top": 3.0}

    def duration(job: Job) -> float:
        return minutes[job.image or ""]

    pipeline = plan_child_pipeline(g, pipeline_id="1")
    assert pipeline.critical_path(duration) == 12.0        # base + slow
    assert stage_per_level_length(g, duration) == 15.0     # base + max(slow, fast) + top


# --- invoke ci-graph's pure parts ---------------------------------------------------------------

def test_exclusions_come_from_the_flag_or_the_setting(tmp_path: Path) -> None:
    from kiln.settings import Settings
    from kiln.tasks.graph import excluded_images

    env = {"KILN_CI_GRAPH_EXCLUDE": "busybox, tool busybox"}
    setting = Settings.resolve(tmp_path, {}, env).ci_graph_exclude  # declared once, in OPTIONS
    assert excluded_images(["a,b", "c"], setting) == ["a", "b", "c"]
    assert excluded_images(None, setting) == ["busybox", "tool"]
    assert excluded_images([], ()) == []
    configured = Settings.resolve(tmp_path, {"ci-graph-exclude": ["tool"]}, {})
    assert excluded_images(None, configured.ci_graph_exclude) == ["tool"]


def test_an_excluded_image_must_not_be_needed_by_the_graph() -> None:
    from kiln.tasks.graph import _without

    g = graph(node("base"), node("python", ("base",)), node("busybox"))
    assert list(_without(g, ["busybox"]).nodes) == ["base", "python"]
    with pytest.raises(InputError, match="python is built FROM it"):
        _without(g, ["base"])
    with pytest.raises(InputError, match="no such image"):
        _without(g, ["nope"])


def test_per_arch_graphs_merge_reused_only_when_every_arch_is() -> None:
    from kiln.tasks.graph import merge_arches

    amd = graph(node("base", changed=False, reusable=True), node("app", ("base",),
                                                                 changed=False, reusable=True))
    arm = graph(node("base", changed=False, reusable=True), node("app", ("base",)))
    merged = merge_arches({"amd64": amd, "arm64": arm})
    assert merged.nodes["base"].arches == MULTI
    assert merged.nodes["base"].reusable and not merged.nodes["base"].changed
    assert merged.nodes["app"].changed and not merged.nodes["app"].reusable


# --- the benchmark's README table ---------------------------------------------------------------

def test_readme_benchmark_table_is_the_one_the_results_make() -> None:
    """README.md's graph benchmark table is generated from benchmarks/results/graph.json by
    benchmarks/graph.py, never pasted."""
    import importlib.util
    import json

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("benchmark_graph", root / "benchmarks" / "graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = json.loads((root / "benchmarks" / "results" / "graph.json").read_text())
    section = module.readme_section((root / "README.md").read_text(encoding="utf-8"))
    assert section is not None, "README.md lacks the graph benchmark markers"
    assert section == module.render_table(results)
    assert (root / "benchmarks" / "results" / "graph.md").read_text().rstrip("\n").endswith(section)


@pytest.mark.tool
def test_ci_graph_task_exit_codes_and_dry_run(tmp_path: Path) -> None:
    """Bad input exits 2 with what to do, before any registry request and writing nothing;
    --dry-run prints the child pipeline (valid GitLab CI) and writes nothing."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "builds").mkdir()
    (tmp_path / "builds" / "base.in").write_text(
        "ARG UPSTREAM_REGISTRY=docker.io\nFROM ${UPSTREAM_REGISTRY}/library/busybox:latest\n")
    (tmp_path / "builds" / "app.in").write_text(
        "ARG REGISTRY\nARG BASE_IMAGE_TAG=latest\nFROM ${REGISTRY}/base:${BASE_IMAGE_TAG}\n")
    (tmp_path / "tasks.py").write_text("from kiln.tasks import namespace  # noqa: F401\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CI", "KILN_", "IMAGE_"))}
    env.update(PYTHONPATH=str(root / "src"), KILN_REGISTRY="registry.invalid/group")

    def ci_graph(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "invoke", "ci-graph", *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)

    needed = ci_graph("--exclude", "base")
    assert needed.returncode == 2, needed.stderr
    assert "cannot leave base out of the generated pipeline: app is built FROM it" in needed.stderr
    unknown = ci_graph("--exclude", "nope")
    assert unknown.returncode == 2 and "--exclude nope: no such image" in unknown.stderr
    assert "images: app, base" in unknown.stderr
    dry = ci_graph("--dry-run", "--exclude", "app")
    assert dry.returncode == 0, dry.stderr
    text = dry.stdout.split("\n", 1)[1]  # after "# write <file>"
    assert ci_schema.validate_text(text) == []
    assert "build:base:" in text and "build:app:" not in text
    assert not (tmp_path / "kiln-child-pipeline.yml").exists()
