"""``invoke run``: try an image locally, in a throwaway container, as the docs describe (a
container with ``--env`` settings, the working tree overlaid at ``/code``).

Why buildah and not podman: ``podman run`` needs setrlimit, which the CI machines refuse, while
``buildah from`` + ``buildah run`` (chroot isolation, the isolation every build already uses)
+ ``buildah rm`` work wherever builds work. buildah does not apply an image's ENTRYPOINT, so the
command is made here from the image's config as ``docker run`` would: ENTRYPOINT, then the
arguments given after ``--`` or else CMD. The exit code is the container's.

Which image: the one ``invoke build`` makes, ``<registry>/<image>:p-<id>[-<arch>]``
(:mod:`kiln.tag_policy`): from local storage when it is there, else pulled from the registry
(:mod:`kiln.registry.access` decides TLS and credentials). When the embedded registry is not
running, an image of that name and tag built against an earlier address is used from local
storage.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln import console, proc, qemu
from kiln.arch import host_arch, normalize_arch
from kiln.buildah import Buildah
from kiln.errors import BuildError, InputError, KilnError
from kiln.redact import looks_like_credential_name
from kiln.registry import access
from kiln.settings import Settings, validate_image_name
from kiln.tag_policy import pipeline_image_ref

CODE_TARGET = "/code"
# python-requirements labels an image with its application's folder (relative to the build
# context), so ``--code`` knows which folder of the working tree the image's /code came from.
APP_DIR_LABEL = "kiln.app-dir"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# -- pure decisions ------------------------------------------------------------------------

def parse_env(pairs: Iterable[str], environ: Mapping[str, str]) -> dict[str, str]:
    """``--env K=V`` (repeatable) as a mapping; ``--env K`` takes K from kiln's own environment,
    as ``docker run -e K`` does. A bad name or an unset variable is an :class:`InputError`."""
    result: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not _ENV_NAME.match(name):
            raise InputError(f"--env {pair!r}: {name!r} is not a variable name",
                             hint="write --env NAME=value (letters, digits, _; not starting "
                                  "with a digit)")
        if not sep:
            if name not in environ:
                raise InputError(f"--env {name}: {name} is not set in this environment",
                                 hint=f"write --env {name}=value, or export {name} first")
            value = environ[name]
        result[name] = value
    return result


def container_command(config: Mapping[str, Any], args: Sequence[str], image: str) -> list[str]:
    """The command ``docker run IMAGE ARGS`` would run: ENTRYPOINT + (ARGS, else CMD)."""
    inner = config.get("config") if isinstance(config.get("config"), Mapping) else config
    assert isinstance(inner, Mapping)
    entrypoint = [str(x) for x in inner.get("Entrypoint") or []]
    cmd = [str(x) for x in inner.get("Cmd") or []]
    command = [*entrypoint, *(args if args else cmd)]
    if not command:
        raise InputError(f"{image} has neither ENTRYPOINT nor CMD",
                         hint="give the command after --, e.g. invoke run --image NAME -- sh")
    return command


def image_labels(config: Mapping[str, Any]) -> dict[str, str]:
    inner = config.get("config") if isinstance(config.get("config"), Mapping) else config
    assert isinstance(inner, Mapping)
    labels = inner.get("Labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}


def code_folder(project_dir: Path, code: str | bool | None,
                labels: Mapping[str, str]) -> Path | None:
    """The folder overlaid at /code: ``--code PATH`` (relative to the project), or with a bare
    ``--code`` the image's application folder (its ``kiln.app-dir`` label, else the project
    directory). ``None`` when --code was not given. Must be an existing folder."""
    if code is None or code is False:
        return None
    if code is True or code == "":
        relative = labels.get(APP_DIR_LABEL, ".")
        folder = (project_dir / relative).resolve()
        given = f"--code (the image's application folder {relative!r})"
    else:
        folder = (project_dir / str(code)).resolve()
        given = f"--code {code}"
    if not folder.is_dir():
        raise InputError(f"{given}: {folder} is not a folder",
                         hint="--code PATH overlays PATH (relative to the project) at /code")
    return folder


def shown_command(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """``argv`` for people: values of credential-looking --env names replaced by ``***``."""
    hidden = {f"{name}={value}": f"{name}=***" for name, value in env.items()
              if looks_like_credential_name(name)}
    return console.mask(shlex.join(hidden.get(word, word) for word in argv))


@dataclass(frozen=True)
class RunPlan:
    """What ``invoke run`` will do: which reference, from where, with what."""

    image: str
    ref: str
    local: bool
    env: Mapping[str, str] = field(default_factory=dict)
    code: str | bool | None = None
    args: tuple[str, ...] = ()
    cap_add: tuple[str, ...] = ()


# -- I/O --------------------------------------------------------------------------------------

def run_image(settings: Settings, image: str, *, env: Iterable[str] = (),
              code: str | bool | None = None, args: Sequence[str] = (),
              cap_add: Sequence[str] = ()) -> int:
    """Run ``image`` in a throwaway container; returns the container's exit code (0 in a dry
    run, which prints the commands instead)."""
    validate_image_name(image)
    variables = parse_env(env, os.environ)
    for name, value in variables.items():
        if looks_like_credential_name(name):
            console.register_secret(value)  # masked in every message of this run
    arch = normalize_arch(settings.arch) if settings.arch else host_arch()
    foreign = arch if arch != host_arch() else None
    if foreign:
        qemu.check_binfmt(foreign)
    if not settings.dry_run:
        proc.which("buildah")
    buildah = Buildah.from_settings(settings)
    ref, local = _locate(settings, buildah, image, foreign)
    plan = RunPlan(image, ref, local, variables, code, tuple(args), tuple(cap_add))
    if settings.dry_run:
        return _print_plan(settings, buildah, plan)
    host = access.registry_host(plan.ref)
    with access.tool_access(settings, {host} | access.own_registry_hosts(settings),
                            keep_auth_file=True) as tools:
        made = proc.run(buildah.from_command(
            plan.ref, pull=not plan.local, tls_verify=access.tls_verify(settings, plan.ref),
            authfile=tools.authfile, cert_dir=tools.cert_dir), what=f"buildah from {plan.ref}",
            check=False)
    if made.returncode != 0:
        raise _from_failure(plan, made)
    container = made.stdout.strip().splitlines()[-1]
    try:
        config = buildah.inspect_config(plan.ref)
        command = container_command(config, plan.args, plan.ref)
        folder = code_folder(settings.project_dir, code, image_labels(config))
        argv = buildah.run_command(
            container, command, env=variables,
            volumes=[f"{folder}:{CODE_TARGET}"] if folder else (),
            workdir=CODE_TARGET if folder else None, cap_add=cap_add)
        console.step(f"running {plan.ref}: {shown_command(command, {})}"
                     + (f" (with {folder} at {CODE_TARGET})" if folder else ""))
        exit_code = proc.run_attached(argv, stdout_to_stderr=console.json_enabled())
    finally:
        proc.run(buildah.rm_command(container), what=f"buildah rm {container}", check=False)
    console.record("ran", image=plan.ref.rpartition(":")[0], tag=plan.ref.rpartition(":")[2],
                   name=image, exit_code=exit_code)
    return exit_code


def _locate(settings: Settings, buildah: Buildah, image: str,
            arch: str | None) -> tuple[str, bool]:
    """The reference to run and whether it is in local storage (else it is pulled from the
    registry); a clear error when there is no registry and no such image here."""
    chosen = access.target_registry(settings, start=False)
    tag_ref = pipeline_image_ref(chosen.prefix or "localhost", image, settings.pipeline_id, arch)
    tag = tag_ref.rpartition(":")[2]
    if chosen.prefix is not None:
        return tag_ref, not settings.dry_run and buildah.image_exists(tag_ref)
    if not settings.dry_run:
        suffix = f"/{image}:{tag}"
        for name in buildah.local_names():
            if name.endswith(suffix):
                return name, True
    raise InputError(
        f"no image {image}:{tag} in local storage, and no registry to pull it from (the "
        "embedded registry is not running and none is configured)",
        hint=f"build it first (invoke build --image {image}"
             + (f" or invoke build-arch --image {image} --arch {arch}" if arch else "")
             + "), or set KILN_REGISTRY / --registry",
    )


_MISSING = re.compile(r"manifest unknown|name unknown|not found|does not exist", re.IGNORECASE)


def _from_failure(plan: RunPlan, result: proc.Result) -> KilnError:
    """``buildah from`` failed: a missing image is bad input (build it first), anything else
    (registry down, refused credentials) a failure of the tool, with its last output."""
    output = (result.stdout + result.stderr).strip()
    tail = "\n".join("    " + line for line in output.splitlines()[-10:])
    if _MISSING.search(output):
        return InputError(
            f"no image {plan.ref} in local storage or in the registry",
            hint=f"build it first: invoke build --image {plan.image} (build-arch --arch ARCH "
                 "for another architecture)")
    return BuildError(f"buildah from {plan.ref} failed (exit {result.returncode}):\n"
                      f"{console.mask(tail)}",
                      hint="is the registry reachable (invoke registry-status)?")


def _print_plan(settings: Settings, buildah: Buildah, plan: RunPlan) -> int:
    lines = [f"# kiln run plan (dry run: no container is started) for {plan.ref}"]
    lines.append(shlex.join(buildah.from_command(
        plan.ref, pull=not plan.local, tls_verify=access.tls_verify(settings, plan.ref))))
    volumes = [f"<{plan.code if isinstance(plan.code, str) and plan.code else 'app folder'}>"
               f":{CODE_TARGET}"] if plan.code else []
    command = ["<ENTRYPOINT>", *(plan.args or ["<CMD>"])]
    lines.append(shown_command(buildah.run_command(
        "<container>", command, env=plan.env, volumes=volumes,
        workdir=CODE_TARGET if plan.code else None, cap_add=plan.cap_add), plan.env))
    lines.append(shlex.join(buildah.rm_command("<container>")))
    for line in lines:
        console.plan(line)
    console.record("planned", image=plan.ref.rpartition(":")[0], tag=plan.ref.rpartition(":")[2],
                   name=plan.image)
    return 0
