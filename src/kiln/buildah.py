"""The buildah adapter: every buildah command line kiln runs is built here.

Builds use this module's :class:`Buildah` so storage location, storage driver and isolation are
applied the same way everywhere (this buildah ignores ``STORAGE_DRIVER``: it becomes a flag).
The ``*_command`` methods are pure (argv lists, no process), so every flag is unit-tested;
:mod:`kiln.build` decides the values from settings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    # -- command lines (pure) ------------------------------------------------------------
    def build_command(
        self,
        *,
        containerfile: Path,
        context: Path,
        tag: str,
        image_format: str = "docker",
        layers: bool = True,
        platform: str | None = None,
        tls_verify: bool = True,
        build_args: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        volumes: Sequence[str] = (),
        authfile: Path | None = None,
        cert_dir: Path | None = None,
        secrets: Sequence[str] = (),
        timestamp: int | None = None,
    ) -> list[str]:
        """``buildah build`` for one image. ``platform`` is ``linux/<arch>`` for foreign-arch
        builds (buildah 1.28 refuses ``--arch`` together with ``--platform``, so only the latter).
        ``timestamp`` (seconds since 1970) fixes the created times of the image and its layers'
        files, so the same inputs give the same layers."""
        args = [
            "build",
            "--format", image_format,
            "--isolation", self.isolation,
            # a failed step must not leave its working container (and its mount) behind
            "--force-rm",
        ]
        if layers:
            args.append("--layers")
        if timestamp is not None:
            args += ["--timestamp", str(timestamp)]
        if platform:
            args += ["--platform", platform]
        args += registry_flags(tls_verify, authfile, cert_dir)
        for volume in volumes:
            args += ["-v", volume]
        for spec in secrets:  # id=npm,env=NPM_TOKEN: mounted for RUN --mount=type=secret only
            args += ["--secret", spec]
        for name, value in (build_args or {}).items():
            args += ["--build-arg", f"{name}={value}"]
        for name, value in (labels or {}).items():
            args += ["--label", f"{name}={value}"]
        args += ["-f", str(containerfile), "-t", tag, str(context)]
        return self.command(*args)

    def push_command(
        self,
        ref: str,
        *,
        destination: str | None = None,
        manifest_format: str = "v2s2",
        tls_verify: bool = True,
        authfile: Path | None = None,
        digestfile: Path | None = None,
        cert_dir: Path | None = None,
    ) -> list[str]:
        """``buildah push`` of local image ``ref`` to ``docker://<destination or ref>``, keeping
        the manifest format (``v2s2`` for docker-format images: no conversion, stable digests)."""
        args = ["push", "--format", manifest_format]
        args += registry_flags(tls_verify, authfile, cert_dir)
        if digestfile is not None:
            args += ["--digestfile", str(digestfile)]
        args += [ref, f"docker://{destination or ref}"]
        return self.command(*args)

    def from_command(self, ref: str, *, pull: bool = True, tls_verify: bool = True,
                     authfile: Path | None = None, cert_dir: Path | None = None) -> list[str]:
        """``buildah from`` a working container of ``ref`` (prints its name); without ``pull``
        only local storage is used (``--pull-never``)."""
        args = ["from", "--quiet"]
        if not pull:
            args.append("--pull-never")
        args += registry_flags(tls_verify, authfile, cert_dir)
        return self.command(*args, ref)

    def run_command(self, container: str, command: Sequence[str], *,
                    env: Mapping[str, str] | None = None, volumes: Sequence[str] = (),
                    workdir: str | None = None, cap_add: Sequence[str] = ()) -> list[str]:
        """``buildah run`` of ``command`` in ``container`` (the image's ENTRYPOINT is not applied
        by buildah: ``command`` is the whole command line). ``env`` adds to the image's Env;
        ``cap_add`` adds capabilities (nested buildah needs CAP_SYS_ADMIN to mount)."""
        args = ["run", "--isolation", self.isolation]
        for capability in cap_add:
            args += ["--cap-add", capability]
        for name, value in (env or {}).items():
            args += ["--env", f"{name}={value}"]
        for volume in volumes:
            args += ["-v", volume]
        if workdir is not None:
            args += ["--workingdir", workdir]
        return self.command(*args, container, "--", *command)

    def rm_command(self, container: str) -> list[str]:
        """``buildah rm``: remove a working container (its image stays)."""
        return self.command("rm", container)

    def local_names(self) -> list[str]:
        """``name:tag`` of every image in local storage (never pulls)."""
        result = self.run("images", "--format", "{{.Name}}:{{.Tag}}", what="buildah images")
        return [line.strip() for line in result.stdout.splitlines() if line.strip()]

    def image_exists(self, ref: str) -> bool:
        """Whether local storage has an image named ``ref`` (never pulls)."""
        result = self.run("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref,
                          what="buildah inspect", check=False)
        return result.returncode == 0

    def inspect_config(self, ref: str) -> dict[str, Any]:
        """The OCI config of local image ``ref`` (Env, Labels, history), read with ``buildah
        inspect`` (never pulls)."""
        result = self.run("inspect", "--type", "image", ref, what="buildah inspect")
        try:
            data = json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            raise BuildError(f"buildah inspect {ref}: not JSON ({exc.msg})") from None
        config = data.get("OCIv1") if isinstance(data, dict) else None
        if not isinstance(config, dict):
            raise BuildError(f"buildah inspect {ref}: no OCIv1 config")
        return config


def registry_flags(tls_verify: bool, authfile: Path | None, cert_dir: Path | None) -> list[str]:
    """How buildah reaches a registry (build's pulls, push, from): the TLS decision and the
    temporary auth file and cert dir of :mod:`kiln.registry.access`, in one place."""
    flags = [] if tls_verify else ["--tls-verify=false"]
    if authfile is not None:
        flags += ["--authfile", str(authfile)]
    if cert_dir is not None:
        flags += ["--cert-dir", str(cert_dir)]
    return flags


def failing_step(output: str) -> str | None:
    """The instruction buildah's output reports as failed, e.g. ``RUN make`` (pure)."""
    failed = re.findall(r'building at STEP "(.*)": ', output)
    if failed:
        return str(failed[-1])
    steps = re.findall(r"^STEP \d+/\d+: (.*)$", output, flags=re.MULTILINE)
    return steps[-1] if steps else None
