"""``invoke run``: run an image in a throwaway container (:mod:`kiln.run_image` does the work).

Arguments after ``--`` go to the image's entry point; the task's exit code is the container's,
so ``invoke run --image backend -- --self-test`` can gate a script.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

from invoke.exceptions import Exit

from kiln import console
from kiln.errors import InputError
from kiln.run_image import run_image
from kiln.settings import Settings
from kiln.tasks.common import kiln_task


def remainder_args(remainder: str, argv: list[str]) -> list[str]:
    """The words after ``--``, as the user typed them: invoke only keeps them joined by spaces,
    so its own command line is used when it says the same, else the joined text is split."""
    if "--" in argv:
        tail = argv[argv.index("--") + 1:]
        if " ".join(tail) == remainder:
            return tail
    return shlex.split(remainder)


@kiln_task(flags=("image", "registry", "arch", "env", "code", "cap_add", "dry_run", "json"), help={
    "env": "NAME=value for the container (repeatable); NAME alone takes kiln's own value",
    "code": "overlay the working tree at /code: the image's application folder, or --code=PATH "
            "(relative to the project)",
    "arch": "run the image built for this architecture (build-arch's p-<id>-<arch>) under qemu",
    "cap_add": "add a capability to the container (repeatable), e.g. CAP_SYS_ADMIN for buildah "
               "inside it",
    "dry_run": "print the buildah commands; start nothing",
}, iterable=["env", "cap_add"], optional=["code"])
def run(c: Any, settings: Settings, env: list[str] | None = None,
        code: str | bool | None = None, cap_add: list[str] | None = None) -> None:
    """Run an image (local storage, else the registry) in a throwaway container; args after --
    go to its entry point; the exit code is the container's."""
    if not settings.image:
        raise InputError("no image given", hint="pass --image NAME or set IMAGE_NAME")
    args = remainder_args(getattr(c, "remainder", "") or "", sys.argv)
    exit_code = run_image(settings, settings.image, env=env or (), code=code, args=args,
                          cap_add=cap_add or ())
    if exit_code != 0:
        console.error(f"the container exited with code {exit_code}")
        if console.json_enabled():
            console.finish(ok=False, exit_code=exit_code)
        raise Exit(code=exit_code)


TASKS = (run,)
