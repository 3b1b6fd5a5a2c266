"""The buildah adapter: every buildah command line kiln runs is built here.

Builds use this module's :class:`Buildah` so storage location, storage driver and isolation are
applied the same way everywhere (this buildah ignores ``STORAGE_DRIVER``: it becomes a flag).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiln import proc
from kiln.errors import BuildError
from kiln.settings import Settings


@dataclass(frozen=True)
class Buildah:
    """How to call buildah: storage and isolation, fixed for a run."""

    root: Path | None = None
    runroot: Path | None = None
    storage_driver: str | None = None
    isolation: str = "chroot"

    @classmethod
    def from_settings(cls, settings: Settings) -> Buildah:
        return cls(
            root=settings.storage_root,
            runroot=settings.storage_runroot,
            storage_driver=settings.storage_driver,
            isolation=settings.isolation,
        )

    def global_args(self) -> list[str]:
        """Options that go before the buildah subcommand."""
        args: list[str] = []
        if self.root is not None:
            args += ["--root", str(self.root)]
        if self.runroot is not None:
            args += ["--runroot", str(self.runroot)]
        if self.storage_driver:
            args += ["--storage-driver", self.storage_driver]
        return args

    def command(self, *args: str) -> list[str]:
        """The full argv of ``buildah <global options> <args>``."""
        return ["buildah", *self.global_args(), *args]

    def run(self, *args: str, what: str | None = None, stream: bool = False,
            check: bool = True) -> proc.Result:
        return proc.run(self.command(*args), error=BuildError, what=what or f"buildah {args[0]}",
                        stream=stream, check=check)
