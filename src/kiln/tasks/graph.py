"""``invoke ci-graph``: write the GitLab child pipeline that builds this pipeline's images.

The image graph with input keys comes from :func:`kiln.build.run.describe_graph` (read-only
registry lookups); :mod:`kiln.ci_graph` turns it into YAML. Images whose input key is already in
the registry are *reused*: by default this task makes their ``p-<id>[-<arch>]`` tags itself (a
manifest copy of the ``k-<key>`` tag per architecture, and the index of a multi-arch image)
before it writes the YAML, so the child pipeline only has jobs for the images that must be
built; ``--no-copy`` leaves the copies to those images' own jobs. With ``IMAGE_ARCHES`` the
graph is planned once per architecture. The YAML is checked against GitLab's CI schema and
``needs:`` before it is written, and written whole or not at all.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kiln import ci_graph as child_pipeline
from kiln import console, promote
from kiln.build import run as engine
from kiln.build.graph import ImageGraph, Node
from kiln.build.plan import list_images
from kiln.errors import InputError, KilnError
from kiln.registry import access
from kiln.registry.reference import split_repository
from kiln.settings import Settings
from kiln.tag_policy import key_tag, pipeline_tag
from kiln.tasks.common import kiln_task

DEFAULT_OUTPUT = "kiln-child-pipeline.yml"


def excluded_images(flag: Iterable[str] | None, setting: Sequence[str]) -> list[str]:
    """``--exclude`` (repeatable, commas allowed), else the ``ci-graph-exclude`` setting
    (``KILN_CI_GRAPH_EXCLUDE``: for a CI job that runs `nox -s ci-graph` and nothing else)."""
    words = [w for item in (flag or []) for w in item.replace(",", " ").split()]
    return list(dict.fromkeys(words or setting))


def merge_arches(graphs: Mapping[str, ImageGraph]) -> ImageGraph:
    """One graph over every architecture: an image is reused only when every architecture's
    key is in the registry, and must be built when any of them is not."""
    first = next(iter(graphs.values()))
    arches = tuple(graphs)
    return ImageGraph({
        name: Node(name, arches, node.deps, node.file, node.key,
                   reusable=all(g.nodes[name].reusable for g in graphs.values()),
                   changed=any(g.nodes[name].changed for g in graphs.values()))
        for name, node in first.nodes.items()})


def _without(graph: ImageGraph, excluded: Sequence[str]) -> ImageGraph:
    for name in excluded:
        if name not in graph:
            raise InputError(f"--exclude {name}: no such image",
                             hint=f"images: {', '.join(graph.nodes)}")
        users = sorted(u for u in graph.dependents(name) if u not in excluded)
        if users:
            raise InputError(
                f"cannot leave {name} out of the generated pipeline: {', '.join(users)} "
                f"{'is' if len(users) == 1 else 'are'} built FROM it",
                hint=f"exclude those too, or let the generated pipeline build {name}")
    return ImageGraph({n: node for n, node in graph.nodes.items() if n not in excluded})


def _copy_reused(settings: Settings, graphs: Mapping[str | None, ImageGraph],
                 images: Sequence[str]) -> None:
    """``k-<key>`` -> ``p-<id>[-<arch>]`` for every reused image, plus the index of a
    multi-arch image: one manifest read and one write per tag, no blob."""
    chosen = access.target_registry(settings)
    target = engine.resolve_target(settings, chosen.prefix if chosen.local else None)
    host, path = split_repository(target.registry)
    arches = [a for a in graphs if a is not None]
    with engine.Registries(settings) as registries:
        client = registries.client(host)
        for name in images:
            repository = f"{path}/{name}" if path else name
            for arch, graph in graphs.items():
                key = graph.nodes[name].key
                assert key is not None, f"{name} is reusable, so it has a key"
                tag = pipeline_tag(settings.pipeline_id, arch)
                digest = registries.copy(f"{target.registry}/{name}:{key_tag(key)}", tag)
                console.record("reused", image=f"{target.registry}/{name}", tag=tag,
                               digest=digest, name=name, arch=arch, key=key)
                console.step(f"reused {target.registry}/{name}:{tag}@{digest} "
                             f"(copy of {key_tag(key)}; nothing to build)")
            if arches:
                result = promote.assemble_index(promote.Registry(client, repository),
                                                settings.ci, arches)
                console.record("indexed", image=f"{target.registry}/{name}",
                               tag=pipeline_tag(settings.pipeline_id), digest=result.digest,
                               name=name)


def _write_whole(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder: a reader (the
    trigger job) sees the old file or the new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@kiln_task(
    flags=("output", "copy", "rebuild", "exclude", "job_image", "registry", "dry_run", "json"),
    iterable=["exclude"],
    help={
        "output": f"file the child pipeline is written to (default {DEFAULT_OUTPUT})",
        "copy": "copy reused images' tags here, so the child has no job for them (default "
                "on; --no-copy gives them ordinary jobs, which the build turns into copies)",
        "rebuild": "build every image, even when its input key is in the registry",
        "exclude": "leave this image to hand-written jobs (repeatable; default "
                   "$KILN_CI_GRAPH_EXCLUDE); nothing of the graph may be built FROM it",
        "job_image": "image the generated jobs run in (default "
                     f"{child_pipeline.DEFAULT_JOB_IMAGE}, expanded by GitLab)",
        "dry_run": "print the child pipeline (every image planned as a build: no registry "
                   "lookups); write and copy nothing",
    },
)
def ci_graph(c: Any, settings: Settings, output: str = DEFAULT_OUTPUT, copy: bool = True,
                  rebuild: bool = False, exclude: list[str] | None = None,
                  job_image: str | None = None) -> None:
    """Write the GitLab child pipeline for the image graph: one job per image and arch,
    needs along the graph; reused images copied, not built."""
    names = list_images(settings.builds_dir)
    if not names:
        raise InputError(f"no build files (*.in) in {settings.builds_dir}",
                         hint="ci-graph generates jobs for builds/<image>.in files")
    excluded = excluded_images(exclude, settings.ci_graph_exclude)
    for name in excluded:  # before any registry request
        if name not in names:
            raise InputError(f"--exclude {name}: no such image (no {settings.builds_dir}/"
                             f"{name}.in)", hint=f"images: {', '.join(names)}")
    if excluded:  # the graph's shape alone (no registry request) says what may be left out
        _without(engine.describe_graph(settings.replace(dry_run=True), names), excluded)
    arch_list: list[str | None] = list(settings.arches) if len(settings.arches) > 1 else [None]
    graphs = {arch: engine.describe_graph(settings, names, arch, rebuild=rebuild)
              for arch in arch_list}
    graphs = {arch: _without(graph, excluded) for arch, graph in graphs.items()}
    if len(arch_list) > 1:
        merged = merge_arches({str(a): g for a, g in graphs.items()})
    else:
        merged = graphs[None]
    reused = [n for n in merged.order()
              if not merged.nodes[n].changed and merged.nodes[n].reusable]
    copied = reused if copy and not settings.dry_run else []
    pipeline = child_pipeline.plan_child_pipeline(
        merged, pipeline_id=settings.pipeline_id, copied=copied,
        job_image=job_image or child_pipeline.DEFAULT_JOB_IMAGE)
    problems = child_pipeline.check(pipeline)
    if problems:
        raise KilnError("the generated child pipeline is not valid GitLab CI (a kiln bug):\n  "
                        + "\n  ".join(str(p) for p in problems))
    text = pipeline.to_yaml()
    target = Path(output)
    if not target.is_absolute():
        target = settings.project_dir / target
    for job in pipeline.jobs:
        console.record("planned" if settings.dry_run else "job", image=job.image or "-",
                       name=job.name, session=job.session, needs=list(job.needs),
                       variables=dict(job.variables))
    if settings.dry_run:
        for name in reused:
            console.plan(f"# reused: copy {name}'s key tag to "
                         f"{pipeline_tag(settings.pipeline_id)} (not in a dry run)")
        console.plan(f"# write {target}")
        for line in text.splitlines():
            console.plan(line)
        return
    if copied:
        _copy_reused(settings, graphs, copied)
    _write_whole(target, text)
    console.step(f"wrote {target}: {len(pipeline.built)} image(s) to build "
                 f"({', '.join(pipeline.built) or 'none'}), {len(pipeline.jobs)} job(s); "
                 f"{len(pipeline.copied)} reused image(s) copied"
                 + (f" ({', '.join(pipeline.copied)})" if pipeline.copied else ""))


TASKS = (ci_graph,)
