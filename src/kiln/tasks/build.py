"""Build tasks: preprocess, build, build-arch, binfmt-register, the embedded registry, images.

Thin: flags become settings (``None`` = not given, so environment and ``[tool.kiln]`` apply),
:mod:`kiln.build`, :mod:`kiln.qemu` and :mod:`kiln.local_registry` do the work. Boolean flags
that default to on (``--deps``, ``--push``) can only be turned off from the command line
(``--no-deps``, ``--no-push``); the environment (``KILN_DEPS``, ``KILN_PUSH``) sets them too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from invoke.tasks import task

from kiln import build as engine
from kiln import console, qemu
from kiln.arch import SUPPORTED_ARCHES, host_arch, parse_arches
from kiln.errors import InputError
from kiln.settings import Settings
from kiln.tasks.common import reports_errors, settings_for

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
    "json": "print a JSON summary of what was built and pushed (image, ref, digest) on stdout",
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
    if settings.json_output:
        console.out(json.dumps({"task": "build", "dry_run": settings.dry_run,
                                "results": [r.as_dict() for r in results]}, indent=2))
    elif not settings.dry_run:
        for r in results:
            where = f"pushed @{r.digest}" if r.pushed else "in local storage"
            console.step(f"done: {r.ref} ({where})")


@task(help={k: _COMMON[k] for k in ("image", "strict")})
@reports_errors
def preprocess(c: Any, image: str | None = None, strict: bool = False) -> None:
    """Print the Containerfile that builds/<image>.in becomes (includes resolved, comments gone)."""
    settings = settings_for(image=image, strict=True if strict else None)
    console.out(engine.preprocess_image(settings, _image(settings)))


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
            "dry_run": "print what would be registered; change nothing"})
@reports_errors
def binfmt_register(c: Any, arch: str | None = None, dry_run: bool = False) -> None:
    """Register qemu-user-static binfmt handlers (root; mounts binfmt_misc when needed)."""
    settings = settings_for(dry_run=True if dry_run else None)
    if arch:
        arches = parse_arches(arch)
    else:
        arches = settings.arches or SUPPORTED_ARCHES
    foreign = [a for a in arches if a != host_arch()]
    if settings.dry_run:
        for a in foreign:
            entry = qemu.read_entry(a)
            state = "registered" if entry and entry.enabled and entry.fix_binary else "register"
            console.out(f"{qemu.handler_name(a)}: {state} "
                        f"({qemu.BINFMT_CONF_DIR / (qemu.handler_name(a) + '.conf')})")
        return
    done = qemu.register_binfmt(foreign)
    for a in foreign:
        name = qemu.handler_name(a)
        console.step(f"{name}: {'registered' if name in done else 'already registered'}")


@task
@reports_errors
def registry_start(c: Any) -> None:
    """Start the embedded local registry (127.0.0.1, data under .kiln/registry)."""
    from kiln.local_registry import start_local_registry

    settings = settings_for()
    state = start_local_registry(settings.state_dir)
    console.out(state.address)


@task
@reports_errors
def registry_stop(c: Any) -> None:
    """Stop the embedded local registry (its data stays)."""
    from kiln.local_registry import stop_local_registry

    settings = settings_for()
    console.step("stopped" if stop_local_registry(settings.state_dir) else "was not running")


@task
@reports_errors
def registry_status(c: Any) -> None:
    """Show the embedded local registry's address, or that it is not running (exit 1)."""
    from invoke.exceptions import Exit

    from kiln.local_registry import local_registry_status

    settings = settings_for()
    state = local_registry_status(settings.state_dir)
    if state is None:
        console.out("not running")
        raise Exit(code=1)
    console.out(f"running at {state.address} (pid {state.pid}, data in {state.workdir})")


@task
@reports_errors
def images(c: Any) -> None:
    """List the images defined in builds/ (one name per line)."""
    settings = settings_for()
    names = engine.list_images(settings.builds_dir)
    if not names:
        console.warn(f"no build files (*.in) in {settings.builds_dir}")
    for name in names:
        console.out(name)


TASKS = (preprocess, build, build_arch, binfmt_register, registry_start, registry_stop,
         registry_status, images)
