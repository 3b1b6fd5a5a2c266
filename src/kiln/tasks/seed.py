"""Task ``seed-upstream``: put kiln's offline upstream images into any registry.

Builds FROM ``${UPSTREAM_REGISTRY}/library/debian:bookworm`` (or busybox) need those images
somewhere. Locally kiln seeds the embedded registry by itself; a CI runner, a test registry or
a shared registry of another project gets them with this task, as if mirrored from Docker Hub:
``<registry>/mirror/library/...`` (then ``KILN_UPSTREAM_REGISTRY=<registry>/mirror``). The work
is :func:`kiln.seed.seed_upstream`'s; this only picks the registry and the images.
"""

from __future__ import annotations

from typing import Any

from kiln import console, seed
from kiln.errors import ConfigError
from kiln.registry.access import target_registry
from kiln.settings import Settings
from kiln.tasks.common import kiln_task


@kiln_task(
    flags=("registry", "upstream", "arches", "dry_run", "json"),
    iterable=["upstream"],
    help={
        "registry": "registry (prefix) to seed: the images go to <registry>/mirror/... "
                    "(default: the configured registry, else the embedded local registry)",
        "upstream": "an offline upstream image to seed (repeatable; default: all of them: "
                    + ", ".join(seed.UPSTREAM_IMAGES) + ")",
        "arches": "architectures to seed besides an image's own (e.g. 'amd64 arm64'; "
                  "default: the host's)",
        "dry_run": "print which images and architectures would go where; contact no registry",
    },
)
def seed_upstream(c: Any, settings: Settings, upstream: list[str] | None = None) -> None:
    """Seed the offline upstream images (Debian, busybox) into a registry's mirror/ path."""
    images = seed.selected_images(upstream or None)
    arches = list(settings.arches) or None
    if settings.dry_run:
        where = settings.registry or "the embedded local registry"
        for image in images:
            wanted = seed.wanted_arches(image, arches)
            console.plan(f"seed {seed.mirror_ref(where, image.name)} ({', '.join(wanted)}) "
                         "unless the registry has it")
        console.summary().mark_used()
        return
    registry = target_registry(settings).prefix
    if registry is None:  # not expected: outside a dry run the embedded registry is started
        raise ConfigError("no registry to seed", hint="pass --registry HOST[:PORT][/PATH]")
    pushed = seed.seed_upstream(settings, registry, names=[i.name for i in images],
                                arches=arches)
    for ref in pushed:
        console.record("seeded", image=ref.rsplit(":", 1)[0], tag=ref.rsplit(":", 1)[1])
    console.step(f"upstream images in {registry}/{seed.MIRROR_PREFIX}: "
                 f"set KILN_UPSTREAM_REGISTRY={registry}/{seed.MIRROR_PREFIX} to build FROM them")
    console.summary().mark_used()


TASKS = (seed_upstream,)

__all__ = ["TASKS", "seed_upstream"]
