#!/usr/bin/env python3
"""Benchmark: the image graph with input keys, and its GitLab child pipeline, in one run.

Real tools throughout: a docker-registry (requests counted from its access log), buildah,
kiln's tasks as a user runs them (``python -m invoke ...``, so wall times include starting
Python). A 6-image graph of busybox images (depth 3, each adding a layer of random data) is built
once (pipeline 1); then:

* **nothing changed, empty storage** (a fresh runner): ``invoke build --all`` (reuse) versus
  ``invoke build --all --rebuild`` on storage as empty, and ``invoke ci-graph`` (the CI path: the
  generator copies every reused image); wall time ratio and registry requests per image;
* **one leaf changed**: ``invoke build --all`` builds only that image;
* **the base changed**: every image above it is built again, dependencies first, each once;
* **a synthetic graph of 50 images (depth 4)**: ``invoke graph`` and ``invoke ci-graph``
  planning time, and the critical-path length of the generated child pipeline versus a
  one-stage-per-level layout, with the same (synthetic, reproducible) job durations.

Writes benchmarks/results/graph.json and graph.md and regenerates the README's table between
its markers (tests/test_ci_graph.py checks the README against graph.json).

    python benchmarks/graph.py [--layer-mb 32] [--work-seconds 20] [--no-readme]
    python benchmarks/graph.py --render-only   # graph.md and README from graph.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START = "<!-- graph-benchmark:start (python benchmarks/graph.py writes this table) -->"
END = "<!-- graph-benchmark:end -->"

PROJECT = "bench"
# image -> images it is built FROM (depth 3: base, two mids, three leaves)
DEMO = {"base": (), "mid-a": ("base",), "mid-b": ("base",), "leaf-a1": ("mid-a",),
        "leaf-a2": ("mid-a",), "leaf-b": ("mid-b",)}
SYNTHETIC_LEVELS = (5, 10, 15, 20)       # 50 images, depth 4
GOAL_RATIO = 0.05


# -- the projects --------------------------------------------------------------------------------

def build_file(name: str, deps: Sequence[str], layer_mb: float, work_s: float = 0.0) -> str:
    """A busybox-based build file: FROM the upstream busybox or our images, ``work_s`` seconds of
    waiting (a stand-in for the package installs of a real build: busybox has no package
    manager offline) and one layer of random data (what a real build adds)."""
    kib = int(layer_mb * 1024)
    head = ["ARG REGISTRY", "ARG BASE_IMAGE_TAG=latest", "ARG UPSTREAM_REGISTRY=docker.io"]
    if not deps:
        head.append("FROM ${UPSTREAM_REGISTRY}/library/busybox:latest")
    else:
        for index, dep in enumerate(deps[1:], start=1):
            head.append(f"FROM ${{REGISTRY}}/{dep}:${{BASE_IMAGE_TAG}} AS dep{index}")
        head.append(f"FROM ${{REGISTRY}}/{deps[0]}:${{BASE_IMAGE_TAG}}")
        for index in range(1, len(deps)):
            head.append(f"COPY --from=dep{index} /etc/motd /etc/motd-{deps[index]}")
    work = f"sleep {work_s:g} && " if work_s else ""
    body = [f"RUN {work}head -c {kib}k /dev/urandom > /{name}.bin && echo {name} >> /etc/motd"]
    return "\n".join(head + body) + "\n"


def make_project(dest: Path, graph: Mapping[str, Sequence[str]], layer_mb: float,
                 work_s: float = 0.0) -> Path:
    (dest / "builds").mkdir(parents=True)
    for name, deps in graph.items():
        (dest / "builds" / f"{name}.in").write_text(build_file(name, deps, layer_mb, work_s))
    (dest / "tasks.py").write_text("from kiln.tasks import namespace  # noqa: F401\n")
    (dest / "pyproject.toml").write_text('[project]\nname = "bench"\n[tool.kiln]\n')
    return dest


def synthetic_graph(seed: int = 10) -> dict[str, tuple[str, ...]]:
    """50 images in 4 levels; each above level 0 is built FROM one image of the level below,
    every fifth FROM two (a multi-stage build)."""
    rng = random.Random(seed)
    graph: dict[str, tuple[str, ...]] = {}
    previous: list[str] = []
    for level, count in enumerate(SYNTHETIC_LEVELS):
        names = [f"l{level}-{i:02d}" for i in range(count)]
        for index, name in enumerate(names):
            if not previous:
                graph[name] = ()
            elif index % 5 == 4 and len(previous) > 1:
                graph[name] = tuple(sorted(rng.sample(previous, 2)))
            else:
                graph[name] = (rng.choice(previous),)
        previous = names
    return graph


def synthetic_minutes(name: str) -> float:
    """A reproducible build time per image: 2 to 20 minutes."""
    return float(random.Random(name).choice((2, 3, 4, 5, 6, 8, 10, 12, 15, 20)))


# -- running kiln ---------------------------------------------------------------------------------

class Kiln:
    """kiln's tasks in one project against one registry, each call a new process."""

    def __init__(self, project: Path, registry: str, work: Path) -> None:
        self.project = project
        self.registry = registry
        self.work = work
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("CI_", "KILN_", "IMAGE_", "GITLAB_"))
                    and k not in {"BASE_IMAGE_TAG", "CI"}}
        self.env.update(PYTHONPATH=str(ROOT / "src"), CI="true",
                        KILN_REGISTRY=f"{registry}/{PROJECT}",
                        KILN_UPSTREAM_REGISTRY=f"{registry}/mirror",
                        KILN_STATE_DIR=str(work / "state"))

    def storage(self, name: str) -> dict[str, str]:
        """Fresh, empty container storage (a new runner)."""
        return {"KILN_STORAGE_ROOT": str(self.work / "storage" / name / "root"),
                "KILN_STORAGE_RUNROOT": str(self.work / "storage" / name / "runroot")}

    def run(self, pipeline: str, storage: str, *args: str) -> tuple[float, dict[str, Any], str]:
        env = dict(self.env, CI_PIPELINE_ID=pipeline, **self.storage(storage))
        argv = [sys.executable, "-m", "invoke", *args, "--json"]
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=self.project, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"failed: {' '.join(args)} (pipeline {pipeline})\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        return elapsed, json.loads(proc.stdout), proc.stderr

    def cleanup(self) -> None:
        """Remove the containers and images of every storage, then what buildah left mounted."""
        for root in (self.work / "storage").glob("*/root"):
            subprocess.run(["buildah", "--root", str(root), "--runroot",
                            str(root.parent / "runroot"), "rm", "--all"], capture_output=True)
            subprocess.run(["buildah", "--root", str(root), "--runroot",
                            str(root.parent / "runroot"), "rmi", "--all", "--force"],
                           capture_output=True)
        with open("/proc/self/mounts", encoding="utf-8") as handle:
            points = [line.split()[1] for line in handle]
        for point in sorted((p for p in points if p.startswith(str(self.work) + "/")),
                            key=len, reverse=True):
            subprocess.run(["umount", point], capture_output=True, check=False)


def requests_by_image(records: Sequence[Any], images: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per image of the project: manifest HEAD/GET/PUT, blob and upload requests; plus the
    upstream mirror's (FROM digests) under ``(upstream)``."""
    result: dict[str, Counter[str]] = {name: Counter() for name in [*images, "(upstream)"]}
    for record in records:
        match = re.match(r"^/v2/(.+?)/(manifests|blobs)/", record.path)
        if not match:
            continue
        repository = match.group(1)
        if repository.startswith(f"{PROJECT}/"):
            owner = repository[len(PROJECT) + 1:]
        elif repository.startswith("mirror/"):
            owner = "(upstream)"
        else:
            continue
        if owner not in result:
            continue
        kind = record.kind
        result[owner][f"{kind} {record.method}" if kind == "manifest" else kind] += 1
    return {name: dict(counts) for name, counts in result.items()}


def per_image_summary(counts: Mapping[str, Mapping[str, int]],
                      images: Sequence[str]) -> dict[str, float]:
    """Average requests per image of the project (the upstream's counted separately)."""
    keys = ("manifest HEAD", "manifest GET", "manifest PUT", "blob", "upload")
    total = {k: sum(counts[name].get(k, 0) for name in images) for k in keys}
    summary = {k: total[k] / len(images) for k in keys}
    summary["upstream manifest requests"] = float(sum(
        v for k, v in counts["(upstream)"].items() if k.startswith("manifest")))
    summary["upstream blob requests"] = float(counts["(upstream)"].get("blob", 0))
    return summary


def actions(document: Mapping[str, Any]) -> dict[str, str]:
    """image -> built / reused, from ``invoke build --json``."""
    return {r["name"]: r["action"] for r in document["results"] if "name" in r}


def push_order(stderr: str, pipeline: str) -> list[str]:
    """The images in the order their builds were pushed (stderr progress lines)."""
    return re.findall(rf"pushed \S+/{PROJECT}/([a-z0-9.-]+):p-{pipeline}\b", stderr)


# -- the scenarios --------------------------------------------------------------------------------

def demo_scenarios(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from kiln import seed
    from kiln.local_registry import RegistryServer
    from kiln.settings import load_settings

    server = RegistryServer(work / "registry")
    host = server.start()
    project = make_project(work / "demo", DEMO, args.layer_mb, args.work_seconds)
    kiln = Kiln(project, host, work)
    try:
        settings = load_settings(project, env={**kiln.env, **kiln.storage("seed")})
        seed.seed_upstream(settings, host, names=["library/busybox:latest"])
        images = list(DEMO)
        first, doc, _ = kiln.run("1", "first", "build", "--all")
        assert set(actions(doc).values()) == {"pushed"}, actions(doc)

        mark = server.log_mark()
        reuse_s, reuse_doc, _ = kiln.run("2", "empty-reuse", "build", "--all")
        reuse_counts = requests_by_image(server.requests_since(mark), images)
        assert set(actions(reuse_doc).values()) == {"reused"}, actions(reuse_doc)

        mark = server.log_mark()
        rebuild_s, rebuild_doc, _ = kiln.run("3", "empty-rebuild", "build", "--all",
                                             "--rebuild")
        rebuild_counts = requests_by_image(server.requests_since(mark), images)
        assert set(actions(rebuild_doc).values()) == {"pushed"}, actions(rebuild_doc)

        mark = server.log_mark()
        ci_s, _, _ = kiln.run("4", "empty-ci", "ci-graph", "--output",
                              str(work / "child-4.yml"))
        ci_counts = requests_by_image(server.requests_since(mark), images)
        child = (work / "child-4.yml").read_text()

        leaf = "leaf-b"
        path = project / "builds" / f"{leaf}.in"
        path.write_text(path.read_text() + "RUN echo changed >> /etc/motd\n")
        leaf_s, leaf_doc, _ = kiln.run("5", "first", "build", "--all")
        leaf_actions = actions(leaf_doc)

        path = project / "builds" / "base.in"
        path.write_text(path.read_text() + "RUN echo changed >> /etc/motd\n")
        base_s, base_doc, base_err = kiln.run("6", "first", "build", "--all")
        base_actions = actions(base_doc)
        order = push_order(base_err, "6")
    finally:
        kiln.cleanup()
        server.stop()

    def deps_first(sequence: Sequence[str]) -> bool:
        return all(sequence.index(dep) < sequence.index(name)
                   for name in sequence for dep in DEMO[name])

    return {
        "images": len(images),
        "layer_mb": args.layer_mb,
        "work_s": args.work_seconds,
        "jobs": os.cpu_count(),
        "first_build_s": round(first, 2),
        "nothing_changed": {
            "reuse_s": round(reuse_s, 2),
            "rebuild_s": round(rebuild_s, 2),
            "ratio": round(reuse_s / rebuild_s, 4),
            "goal": GOAL_RATIO,
            "ci_graph_s": round(ci_s, 2),
            "ci_graph_ratio": round(ci_s / rebuild_s, 4),
            "ci_graph_child_jobs": len([k for k in yaml.safe_load(child)
                                        if k not in {"stages", "variables"}]),
            "reuse_per_image": per_image_summary(reuse_counts, images),
            "ci_graph_per_image": per_image_summary(ci_counts, images),
            "rebuild_per_image": per_image_summary(rebuild_counts, images),
        },
        "leaf_changed": {
            "image": leaf,
            "built": sorted(n for n, a in leaf_actions.items() if a == "pushed"),
            "reused": sorted(n for n, a in leaf_actions.items() if a == "reused"),
            "wall_s": round(leaf_s, 2),
        },
        "base_changed": {
            "built": sorted(n for n, a in base_actions.items() if a == "pushed"),
            "push_order": order,
            "each_once": sorted(order) == sorted(images),
            "dependencies_first": len(order) == len(images) and deps_first(order),
            "wall_s": round(base_s, 2),
        },
    }


def synthetic_scenario(work: Path) -> dict[str, Any]:
    from kiln import ci_graph
    from kiln.build.graph import ImageGraph, Node
    from kiln.local_registry import RegistryServer

    graph_spec = synthetic_graph()
    server = RegistryServer(work / "registry-50")
    host = server.start()
    project = make_project(work / "synthetic", graph_spec, 0.001)
    kiln = Kiln(project, host, work)
    try:
        from kiln import seed
        from kiln.settings import load_settings

        settings = load_settings(project, env={**kiln.env, **kiln.storage("seed")})
        seed.seed_upstream(settings, host, names=["library/busybox:latest"])
        graph_s, graph_doc, _ = kiln.run("1", "synthetic", "graph")
        ci_s, _, _ = kiln.run("1", "synthetic", "ci-graph", "--output",
                              str(work / "child-50.yml"))
        dry_s, _, _ = kiln.run("1", "synthetic", "ci-graph", "--dry-run")
    finally:
        server.stop()
    nodes = graph_doc["graph"]["nodes"]
    graph = ImageGraph({n["image"]: Node(n["image"], tuple(n["arches"]), tuple(n["deps"]),
                                         n["file"]) for n in nodes})
    start = time.perf_counter()
    pipeline = ci_graph.plan_child_pipeline(graph, pipeline_id="1")
    text = pipeline.to_yaml()
    plan_ms = (time.perf_counter() - start) * 1000
    assert ci_graph.check(pipeline) == []
    written = (work / "child-50.yml").read_text()

    def duration(job: ci_graph.Job) -> float:
        return synthetic_minutes(job.image or "")

    needs_min = pipeline.critical_path(duration)
    staged_min = ci_graph.stage_per_level_length(graph, duration)
    return {
        "images": len(graph), "depth": len(graph.levels()),
        "edges": len(graph.edges()),
        "invoke_graph_s": round(graph_s, 2),
        "invoke_ci_graph_s": round(ci_s, 2),
        "invoke_ci_graph_dry_run_s": round(dry_s, 2),
        "generator_in_process_ms": round(plan_ms, 1),
        "child_jobs": len(pipeline.jobs),
        "same_yaml_as_cli": written.split("\n", 4)[-1] == text.split("\n", 4)[-1],
        "critical_path_min": needs_min,
        "stage_per_level_min": staged_min,
        "critical_path_ratio": round(needs_min / staged_min, 3),
        "job_minutes": "2-20 per image, reproducible per name (benchmarks/graph.py)",
    }


# -- the report -----------------------------------------------------------------------------------

def render_table(results: Mapping[str, Any]) -> str:
    """The README's table, from graph.json (the README is never edited by hand here)."""
    demo, synth = results["demo"], results["synthetic"]
    nothing = demo["nothing_changed"]
    reuse, ci, rebuild = (nothing["reuse_per_image"], nothing["ci_graph_per_image"],
                          nothing["rebuild_per_image"])

    def per(summary: Mapping[str, float]) -> str:
        return " / ".join(f"{value:.3g}" for value in (
            summary["manifest HEAD"], summary["manifest GET"], summary["manifest PUT"],
            summary["blob"] + summary["upload"]))

    verdict = "met" if nothing["ratio"] <= nothing["goal"] else "NOT met"
    rows = [
        "| scenario | result |",
        "| --- | --- |",
        f"| nothing changed, empty storage: `build --all` vs `--rebuild` ({demo['images']} "
        f"images, depth 3; each build step {demo['work_s']:g} s of `sleep` standing in for "
        f"package installs, then a {demo['layer_mb']:g} MB layer; --jobs {demo['jobs']}) | "
        f"{nothing['reuse_s']:.2f} s vs "
        f"{nothing['rebuild_s']:.2f} s: ratio {nothing['ratio']:.3f} (goal <= "
        f"{nothing['goal']:g}: {verdict}) |",
        f"| same, `ci-graph` (the generator copies every image) | {nothing['ci_graph_s']:.2f} s: "
        f"ratio {nothing['ci_graph_ratio']:.3f}; child pipeline: "
        f"{nothing['ci_graph_child_jobs']} job |",
        "| requests per image, manifest HEAD / GET / PUT / blob+upload: reuse | "
        f"{per(reuse)} (plus {reuse['upstream manifest requests']:g} manifest requests for the "
        "upstream FROM image's digest, per run) |",
        f"| ... `ci-graph` | {per(ci)} (plus {ci['upstream manifest requests']:g} upstream) |",
        f"| ... `--rebuild` | {per(rebuild)} (plus {rebuild['upstream manifest requests']:g} "
        f"upstream manifest and {rebuild['upstream blob requests']:g} blob requests) |",
        f"| one leaf changed ({demo['leaf_changed']['image']}) | built: "
        f"{', '.join(demo['leaf_changed']['built'])}; reused: "
        f"{len(demo['leaf_changed']['reused'])} images |",
        f"| base changed | built: {len(demo['base_changed']['built'])} of {demo['images']}, "
        f"pushed in order {' -> '.join(demo['base_changed']['push_order'])}; each once: "
        f"{'yes' if demo['base_changed']['each_once'] else 'NO'}; dependencies first: "
        f"{'yes' if demo['base_changed']['dependencies_first'] else 'NO'} |",
        f"| synthetic graph, {synth['images']} images, depth {synth['depth']}: planning time | "
        f"`invoke graph` {synth['invoke_graph_s']:.2f} s, `invoke ci-graph` "
        f"{synth['invoke_ci_graph_s']:.2f} s ({synth['child_jobs']} jobs; the generator itself "
        f"{synth['generator_in_process_ms']:.1f} ms) |",
        f"| ... critical path: `needs:` along the graph vs one stage per level | "
        f"{synth['critical_path_min']:g} min vs {synth['stage_per_level_min']:g} min "
        f"(ratio {synth['critical_path_ratio']:.2f}; job times {synth['job_minutes']}) |",
    ]
    return "\n".join(rows)


def readme_section(text: str) -> str | None:
    """The table between the README's markers (None when the markers are missing)."""
    if START not in text or END not in text:
        return None
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n")


def write_readme(table: str, path: Path = README) -> bool:
    text = path.read_text(encoding="utf-8")
    if readme_section(text) is None:
        print(f"{path}: no benchmark markers; table not written", file=sys.stderr)
        return False
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    path.write_text(f"{before}{START}\n{table}\n{END}{after}", encoding="utf-8")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--layer-mb", type=float, default=32.0,
                        help="random data each demo image adds (MB)")
    parser.add_argument("--work-seconds", type=float, default=20.0,
                        help="seconds each demo build step waits (stand-in for package installs)")
    parser.add_argument("--no-readme", action="store_true", help="do not update README.md")
    parser.add_argument("--render-only", action="store_true",
                        help="only rewrite graph.md and the README table from graph.json")
    args = parser.parse_args()
    if args.render_only:
        return report(json.loads((RESULTS / "graph.json").read_text(encoding="utf-8")),
                      readme=not args.no_readme)
    for tool in ("buildah", "skopeo", "docker-registry"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not installed (apt-get install {tool})")
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-graph-"))
    try:
        results = {"demo": demo_scenarios(args, work), "synthetic": synthetic_scenario(work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "graph.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return report(results, readme=not args.no_readme)


def report(results: Mapping[str, Any], *, readme: bool) -> int:
    """graph.md and (with ``readme``) the README table, from the results."""
    table = render_table(results)
    (RESULTS / "graph.md").write_text("## image graph benchmark (python benchmarks/graph.py)\n\n"
                                      + table + "\n", encoding="utf-8")
    print(table)
    if readme:
        write_readme(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
