"""Build tasks: preprocess, build, build-arch, binfmt-register, the embedded registry, images.

Thin: flags become settings (``None`` = not given, so environment and ``[tool.kiln]`` apply),
:mod:`kiln.build`, :mod:`kiln.qemu` and :mod:`kiln.local_registry` do the work. Boolean flags
that default to on (``--deps``, ``--push``) can only be turned off from the command line
(``--no-deps``, ``--no-push``); the environment (``KILN_DEPS``, ``KILN_PUSH``) sets them too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from invoke.tasks import task

from kiln import build as engine
from kiln import console, qemu
from kiln.arch import SUPPORTED_ARCHES, host_arch, parse_arches
from kiln.errors import InputError
from kiln.settings import Settings
from kiln.tasks.common import DRY_RUN_HELP, JSON_HELP, flag, reports_errors, settings_for

_COMMON = {
    "image": "image to build: builds/<IMAGE>.in (default IMAGE_NAME)",
    "registry": "registry prefix for our images, e.g. 127.0.0.1:5000 or "
                "registry.gitlab.com/group/project (default CI_REGISTRY_IMAGE / KILN_REGISTRY, "
                "else the embedded local registry)",
    "strict": "treat preprocessing warnings (shell '#' comments, cpp hazards) as errors",
    "dry_run": "print the plan (Containerfile path, exact buildah commands, pushes); change nothing",
    "deps": "build our own base images first when their tag is missing in the target "
            "(default on; --no-deps to never build them)",
    "push": "push after building (default: to the configured registry, in CI, or to the embedded "
            "local registry; --no-push keeps the image in local storage only)",
    "base_image_tag": "tag of our base images used in FROM (BASE_IMAGE_TAG, default latest)",
    "json": JSON_HELP,
}


def _flags(*, strict: bool = False, dry_run: bool = False, deps: bool = True,
           push: bool = True, json: bool = False, **values: Any) -> dict[str, Any]:
    """Task flags -> settings flags; a boolean left at its default counts as 'not given'."""
    return {
        **values,
        "strict": True if strict else None,
        "dry_run": True if dry_run else None,
        "deps": None if deps else False,
        "push": None if push else False,
        "json_output": True if json else None,
    }


def _image(settings: Settings) -> str:
    if not settings.image:
        known = engine.list_images(settings.builds_dir)
        raise InputError("no image given", hint="pass --image NAME or set IMAGE_NAME; images: "
                         + (", ".join(known) or f"none in {settings.builds_dir}"))
    return settings.image


def _report(settings: Settings, results: Sequence[engine.BuildResult]) -> None:
    """One line per image for people; one ``--json`` result each (image = repository, tag,
    digest, plus the build's details)."""
    for r in results:
        repository, _, tag = r.ref.rpartition(":")
        action = "planned" if settings.dry_run else "pushed" if r.pushed else "built"
        details = {k: v for k, v in r.as_dict().items() if k not in {"image", "digest"}}
        console.record(action, image=repository, tag=tag, digest=r.digest, name=r.image,
                       **details)
        if not settings.dry_run:
            where = f"pushed @{r.digest}" if r.pushed else "in local storage"
            console.step(f"done: {r.ref} ({where})")


@task(help={k: _COMMON[k] for k in ("image", "strict")} | {
    "dry_run": "accepted for symmetry: preprocess only prints (nothing is written)",
    "json": JSON_HELP})
@reports_errors
def preprocess(c: Any, image: str | None = None, strict: bool = False, dry_run: bool = False,
               json: bool = False) -> None:
    """Print the Containerfile that builds/<image>.in becomes (includes resolved, comments gone)."""
    settings = settings_for(image=image, strict=flag(strict), dry_run=flag(dry_run),
                            json_output=flag(json))
    name = _image(settings)
    text = engine.preprocess_image(settings, name)
    console.record("preprocessed", image=name, build_file=str(engine.build_file_for(settings,
                                                                                  name)),
                   containerfile=text)
    if not console.json_enabled():
        console.out(text)


@task(help=_COMMON)
@reports_errors
def build(c: Any, image: str | None = None, registry: str | None = None, strict: bool = False,
          dry_run: bool = False, deps: bool = True, push: bool = True,
          base_image_tag: str | None = None, json: bool = False) -> None:
    """Build an image with buildah (v2s2, chroot, layer cache); push <registry>/<image>:p-<id>."""
    settings = settings_for(**_flags(image=image, registry=registry, strict=strict,
                                     dry_run=dry_run, deps=deps, push=push, json=json,
                                     base_image_tag=base_image_tag))
    _report(settings, engine.build(settings, _image(settings)))


@task(help=_COMMON | {"arch": "target architecture: amd64 arm64 ppc64le s390x (aliases such as "
                                "aarch64 work; default IMAGE_ARCH)"})
@reports_errors
def build_arch(c: Any, image: str | None = None, arch: str | None = None,
               registry: str | None = None, strict: bool = False, dry_run: bool = False,
               deps: bool = True, push: bool = True, base_image_tag: str | None = None,
               json: bool = False) -> None:
    """Build an image for one architecture through qemu; tag p-<id>-<arch>."""
    settings = settings_for(**_flags(image=image, arch=arch, registry=registry, strict=strict,
                                     dry_run=dry_run, deps=deps, push=push, json=json,
                                     base_image_tag=base_image_tag))
    _report(settings, engine.build(settings, _image(settings), arch=settings.arch))


@task(help={"arch": "architectures to register, e.g. 'arm64 s390x' (default IMAGE_ARCHES, "
                    "else every supported foreign architecture)",
            "dry_run": "print what would be registered; change nothing", "json": JSON_HELP})
@reports_errors
def binfmt_register(c: Any, arch: str | None = None, dry_run: bool = False,
                    json: bool = False) -> None:
    """Register qemu-user-static binfmt handlers (root; mounts binfmt_misc when needed)."""
    settings = settings_for(dry_run=flag(dry_run), json_output=flag(json))
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


_SIMPLE = {"dry_run": DRY_RUN_HELP, "json": JSON_HELP}


@task(help=_SIMPLE)
@reports_errors
def registry_start(c: Any, dry_run: bool = False, json: bool = False) -> None:
    """Start the embedded local registry (127.0.0.1, data under .kiln/registry)."""
    from kiln.local_registry import REGISTRY_BINARY, local_registry_status, start_local_registry

    settings = settings_for(dry_run=flag(dry_run), json_output=flag(json))
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


@task(help=_SIMPLE)
@reports_errors
def registry_stop(c: Any, dry_run: bool = False, json: bool = False) -> None:
    """Stop the embedded local registry (its data stays)."""
    from kiln.local_registry import local_registry_status, stop_local_registry

    settings = settings_for(dry_run=flag(dry_run), json_output=flag(json))
    if settings.dry_run:
        running = local_registry_status(settings.state_dir)
        console.plan(f"stop pid {running.pid} (registry at {running.address}; data stays)"
                     if running else "not running: nothing to stop")
        return
    stopped = stop_local_registry(settings.state_dir)
    console.record("stopped" if stopped else "absent", image="embedded registry")
    console.step("stopped" if stopped else "was not running")


@task(help=_SIMPLE | {"dry_run": "accepted for symmetry: status only reads"})
@reports_errors
def registry_status(c: Any, dry_run: bool = False, json: bool = False) -> None:
    """Show the embedded local registry's address, or that it is not running (exit 1)."""
    from invoke.exceptions import Exit

    from kiln.local_registry import local_registry_status

    settings = settings_for(dry_run=flag(dry_run), json_output=flag(json))
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


@task(help=_SIMPLE | {"dry_run": "accepted for symmetry: images only reads"})
@reports_errors
def images(c: Any, dry_run: bool = False, json: bool = False) -> None:
    """List the images defined in builds/ (one name per line)."""
    settings = settings_for(dry_run=flag(dry_run), json_output=flag(json))
    names = engine.list_images(settings.builds_dir)
    if not names:
        console.warn(f"no build files (*.in) in {settings.builds_dir}")
    console.summary().used = True
    for name in names:
        console.record("defined", image=name, build_file=str(settings.builds_dir / f"{name}.in"))
        if not console.json_enabled():
            console.out(name)


TASKS = (preprocess, build, build_arch, binfmt_register, registry_start, registry_stop,
         registry_status, images)
