"""Build tasks: preprocess, build, build-arch, graph, binfmt-register, the embedded registry,
images.

Thin: flags become settings (``None`` = not given, so environment and ``[tool.kiln]`` apply),
:mod:`kiln.build`, :mod:`kiln.qemu` and :mod:`kiln.local_registry` do the work. Boolean flags
that default to on (``--deps``, ``--push``) can only be turned off from the command line
(``--no-deps``, ``--no-push``); the environment (``KILN_DEPS``, ``KILN_PUSH``) sets them too.
``--image`` may be given more than once (build, build-arch, graph); without it ``IMAGE_NAME``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from kiln import build as engine
from kiln import console, qemu
from kiln.arch import SUPPORTED_ARCHES, host_arch, parse_arches
from kiln.errors import InputError
from kiln.settings import Settings, validate_image_name
from kiln.tasks.common import kiln_task

# the flags of before keep their short forms: new flags go last
_BUILD_FLAGS = ("image", "registry", "strict", "dry_run", "deps", "push", "base_image_tag", "json",
                "all", "jobs", "rebuild")
_BUILD_HELP = {
    "image": "image name: builds/<IMAGE>.in (repeat --image for several; default IMAGE_NAME)",
    "all": "every image in builds/ (the whole graph, dependencies first)",
    "jobs": "images built at the same time when they do not depend on each other "
            "(default: the CPU count)",
    "rebuild": "build even when the registry has an image for the same input key",
    "dry_run": "print the plan (Containerfile path, exact buildah commands, pushes); change nothing",
}


def _image(settings: Settings) -> str:
    if not settings.image:
        known = engine.list_images(settings.builds_dir)
        raise InputError("no image given", hint="pass --image NAME or set IMAGE_NAME; images: "
                         + (", ".join(known) or f"none in {settings.builds_dir}"))
    return settings.image


def _images(settings: Settings, image: str | Sequence[str] | None, every: bool) -> list[str]:
    """The images named by ``--image`` (repeatable; one name when called from Python),
    ``--all``, or ``IMAGE_NAME``."""
    given = [image] if isinstance(image, str) else list(image or [])
    names = [validate_image_name(name) for name in given]
    if every:
        if names:
            raise InputError("--all and --image together",
                             hint="pass --all for every image, or --image for some")
        names = engine.list_images(settings.builds_dir)
        if not names:
            raise InputError(f"no build files (*.in) in {settings.builds_dir}")
        return names
    return names or [_image(settings)]


def _report(settings: Settings, results: Sequence[engine.BuildResult]) -> None:
    """One line per image for people; one ``--json`` result each (image = repository, tag,
    digest, plus the build's details)."""
    for r in results:
        repository, _, tag = r.ref.rpartition(":")
        action = ("planned" if settings.dry_run else "reused" if r.reused
                  else "pushed" if r.pushed else "built")
        details = {k: v for k, v in r.as_dict().items() if k not in {"image", "digest"}}
        console.record(action, image=repository, tag=tag, digest=r.digest, name=r.image,
                       **details)
        if not settings.dry_run:
            where = (f"reused @{r.digest}" if r.reused else f"pushed @{r.digest}" if r.pushed
                     else "in local storage")
            console.step(f"done: {r.ref} ({where})")


def _build(settings: Settings, image: str | Sequence[str] | None, every: bool, jobs: str | None,
           rebuild: bool, arch: str | None) -> None:
    count = engine.parse_jobs(jobs, os.cpu_count())
    names = _images(settings, image, every)
    _report(settings, engine.build(settings, names, arch=arch, rebuild=rebuild, jobs=count))


@kiln_task(flags=("image", "strict", "dry_run", "json"), help={
    "dry_run": "accepted for symmetry: preprocess only prints (nothing is written)"})
def preprocess(c: Any, settings: Settings) -> None:
    """Print the Containerfile that builds/<image>.in becomes (includes resolved, comments gone)."""
    name = _image(settings)
    text = engine.preprocess_image(settings, name)
    console.record("preprocessed", image=name, build_file=str(engine.build_file_for(settings,
                                                                                  name)),
                   containerfile=text)
    if not console.json_enabled():
        console.out(text)


@kiln_task(flags=_BUILD_FLAGS, help=_BUILD_HELP, iterable=["image"])
def build(c: Any, settings: Settings, image: list[str] | None = None,
          all: bool = False,  # noqa: A002 - the flag is --all
          jobs: str | None = None, rebuild: bool = False) -> None:
    """Build images with buildah (v2s2, chroot, layer cache); push <registry>/<image>:p-<id>.
    Dependencies first; an image whose input key the registry has is reused, not rebuilt."""
    _build(settings, image, all, jobs, rebuild, None)


@kiln_task(flags=(*_BUILD_FLAGS[:1], "arch", *_BUILD_FLAGS[1:]), help=_BUILD_HELP,
           iterable=["image"])
def build_arch(c: Any, settings: Settings, image: list[str] | None = None,
               all: bool = False,  # noqa: A002 - the flag is --all
               jobs: str | None = None, rebuild: bool = False) -> None:
    """Build images for one architecture through qemu; tag p-<id>-<arch>."""
    _build(settings, image, all, jobs, rebuild, settings.arch)


@kiln_task(flags=("image", "arch", "mermaid", "registry", "rebuild", "json"), help={
    "image": "images to show with what they are built FROM (repeatable; default: all)",
    "arch": "architecture whose input keys to compute (default: the host's)",
    "mermaid": "print a Mermaid diagram (GitLab renders it; images to build highlighted)",
    "rebuild": "show every image as to be built (as build --rebuild would)",
    "json": "print nodes, edges, input keys and reuse as one JSON document",
    "dry_run": "do not ask the registry: the graph without input keys",
}, iterable=["image"])
def graph(c: Any, settings: Settings, image: list[str] | None = None, mermaid: bool = False,
          rebuild: bool = False) -> None:
    """Print the image graph in build order: what each image is built FROM, its input key and
    whether the target registry already has an image for it."""
    given = [image] if isinstance(image, str) else list(image or [])
    names = [validate_image_name(name) for name in given]
    arch = settings.arch if settings.arch != host_arch() else None
    result = engine.describe_graph(settings, names or None, arch, rebuild=rebuild)
    console.summary().set_extra("graph", result.as_dict())
    for name in result.order():
        node = result.nodes[name]
        console.record("build" if node.changed else "reuse", image=name, key=node.key,
                       deps=list(node.deps), arches=list(node.arches), reusable=node.reusable,
                       file=node.file)
    if console.json_enabled():
        return
    console.out(result.to_mermaid() if mermaid else result.to_table())


@kiln_task(flags=("arch", "dry_run", "json"), help={
    "arch": "architectures to register, e.g. 'arm64 s390x' (default IMAGE_ARCHES, else every "
            "supported foreign architecture)",
    "dry_run": "print what would be registered; change nothing"})
def binfmt_register(c: Any, settings: Settings, arch: str | None = None) -> None:
    """Register qemu-user-static binfmt handlers (root; mounts binfmt_misc when needed)."""
    if arch:
        arches = parse_arches(arch)
    else:
        arches = settings.arches or SUPPORTED_ARCHES
    foreign = [a for a in arches if a != host_arch()]
    if settings.dry_run:
        for a in foreign:
            entry = qemu.read_entry(a)
            state = "registered" if entry and entry.enabled and entry.fix_binary else "register"
            conf = qemu.BINFMT_CONF_DIR / (qemu.handler_name(a) + ".conf")
            console.record("planned" if state == "register" else "registered",
                           image=qemu.handler_name(a), conf=str(conf))
            console.plan(f"{qemu.handler_name(a)}: {state} ({conf})")
        return
    done = qemu.register_binfmt(foreign)
    for a in foreign:
        name = qemu.handler_name(a)
        console.record("registered", image=name, new=name in done)
        console.step(f"{name}: {'registered' if name in done else 'already registered'}")


@kiln_task()
def registry_start(c: Any, settings: Settings) -> None:
    """Start the embedded local registry (127.0.0.1, data under .kiln/registry)."""
    from kiln.local_registry import REGISTRY_BINARY, local_registry_status, start_local_registry

    if settings.dry_run:
        running = local_registry_status(settings.state_dir)
        if running is not None:
            console.plan(f"already running at {running.address}: nothing to do")
        else:
            workdir = settings.state_dir / "registry"
            console.plan(f"write {workdir / 'config.yml'} (127.0.0.1, a free port, deletes "
                         f"enabled, data in {workdir / 'data'})")
            console.plan(f"{REGISTRY_BINARY} serve {workdir / 'config.yml'}  (detached; state in "
                         f"{workdir / 'state.json'})")
        return
    state = start_local_registry(settings.state_dir)
    console.record("started", image=state.address, pid=state.pid)
    if not console.json_enabled():
        console.out(state.address)


@kiln_task()
def registry_stop(c: Any, settings: Settings) -> None:
    """Stop the embedded local registry (its data stays)."""
    from kiln.local_registry import local_registry_status, stop_local_registry

    if settings.dry_run:
        running = local_registry_status(settings.state_dir)
        console.plan(f"stop pid {running.pid} (registry at {running.address}; data stays)"
                     if running else "not running: nothing to stop")
        return
    stopped = stop_local_registry(settings.state_dir)
    console.record("stopped" if stopped else "absent", image="embedded registry")
    console.step("stopped" if stopped else "was not running")


@kiln_task(help={"dry_run": "accepted for symmetry: status only reads"})
def registry_status(c: Any, settings: Settings) -> None:
    """Show the embedded local registry's address, or that it is not running (exit 1)."""
    from invoke.exceptions import Exit

    from kiln.local_registry import local_registry_status

    state = local_registry_status(settings.state_dir)
    if state is None:
        console.record("absent", image="embedded registry")
        if console.json_enabled():
            console.finish(ok=False, exit_code=1)
        else:
            console.out("not running")
        raise Exit(code=1)
    console.record("running", image=state.address, pid=state.pid, data=state.workdir)
    if not console.json_enabled():
        console.out(f"running at {state.address} (pid {state.pid}, data in {state.workdir})")


@kiln_task(help={"dry_run": "accepted for symmetry: images only reads"})
def images(c: Any, settings: Settings) -> None:
    """List the images defined in builds/ (one name per line)."""
    names = engine.list_images(settings.builds_dir)
    if not names:
        console.warn(f"no build files (*.in) in {settings.builds_dir}")
    console.summary().mark_used()
    for name in names:
        console.record("defined", image=name, build_file=str(settings.builds_dir / f"{name}.in"))
        if not console.json_enabled():
            console.out(name)


TASKS = (preprocess, build, build_arch, graph, binfmt_register, registry_start, registry_stop,
         registry_status, images)
