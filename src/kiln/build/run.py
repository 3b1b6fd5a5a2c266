"""Building images: ``builds/<image>.in`` -> Containerfile -> ``buildah build`` -> push.

The pure parts (references, build arguments, labels, FROM parsing, the dependency plan, buildah
argv) take values, not processes, and are unit-tested without subprocesses; :func:`build` is the
thin I/O shell around them. Decisions where the issue was silent:

* **Build context** = the project directory (``context_dir`` overrides), so a build file can
  ``COPY services/backend /code``. Includes are searched as buildah's ``.in`` handling does
  (``cpp -iquote <context>``): the context, then the repo's ``includes/``, then kiln's shipped
  includes (``kiln.preprocess.default_include_path``); cpp's quote rule also looks in the
  including file's own folder (``builds/``) first.
* **Containerfile** is written to ``<state_dir>/build/<image>/Containerfile`` and kept: a failing
  step's error names its line there.
* **Target registry**: ``settings.registry`` when set (pushes by default); in CI without one,
  a configuration error; otherwise the embedded local registry (started on demand), with
  ``UPSTREAM_REGISTRY=<address>/mirror`` (unless ``upstream_registry`` is configured to
  something other than ``docker.io``) seeded offline by :mod:`kiln.seed`. ``--no-push`` keeps the
  image in local storage only.
* **TLS**: ``--tls-verify=false`` when the target or upstream registry is on loopback
  (127.0.0.0/8, localhost, ::1: plain HTTP unless ``loopback_tls``) or ``tls_verify`` is off;
  :mod:`kiln.registry.access` decides, for every tool and the HTTP client alike.
* **CA bundle**: ``ca_bundle`` is bind-mounted read-only at ``/etc/ssl/certs/ca-certificates.crt``
  for RUN steps only; its content never enters a layer (buildah leaves an empty mount-point file,
  as it does for ``/etc/hosts``). It is also trusted for registry TLS (a temporary
  ``--cert-dir``, added to the system roots), as the registry client does.
* **Credentials**: ``CI_REGISTRY_USER``/``CI_REGISTRY_PASSWORD`` go into a temporary auth file
  (mode 0600, deleted afterwards; :func:`kiln.registry.access.tool_access`) for our registry host
  only, never onto a command line.
* **Dependencies** (``deps``, default on): FROM lines naming ``<registry>/<name>`` where
  ``builds/<name>.in`` exists are our own images. When a dependency's tag (``BASE_IMAGE_TAG``,
  default ``latest``) is absent from the target registry (or, with ``--no-push``, from local
  storage too), kiln builds it first, in the same pipeline (``p-<id>[-<arch>]``), recursively,
  and passes ``BASE_IMAGE_TAG=p-<id>[-<arch>]`` to the dependent. If one of an image's own
  dependencies is built, all of them are (``BASE_IMAGE_TAG`` applies to every FROM). Present
  dependencies are used as they are: ``--no-deps`` never builds them. A cycle is an error.
"""

from __future__ import annotations

import os
import re
import shlex
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kiln import console, credentials, proc, qemu, seed
from kiln.arch import normalize_arch
from kiln.buildah import Buildah, failing_step
from kiln.containerfile import FromLine, locate_step, parse_from_lines
from kiln.errors import (
    BuildError,
    ConfigError,
    InputError,
    KilnError,
    RegistryAuthError,
    RegistryError,
    RegistryTransientError,
    ToolMissingError,
)
from kiln.registry import access
from kiln.registry.access import ToolAccess
from kiln.registry.client import open_client
from kiln.settings import Settings, validate_image_name
from kiln.tag_policy import pipeline_image_ref as image_ref
from kiln.tag_policy import pipeline_tag

CA_TARGET = "/etc/ssl/certs/ca-certificates.crt"
LOCAL_PLACEHOLDER = "127.0.0.1:<port>"


# -- names and references (pure) -----------------------------------------------------------

# p-<id>[-<arch>] (pipeline_tag, image_ref) has one home: kiln.tag_policy (docs/tags.md).



def push_format(image_format: str) -> str:
    """The manifest format ``buildah push`` must keep: docker images stay Docker v2s2."""
    return "v2s2" if image_format == "docker" else "oci"


def list_images(builds_dir: Path) -> list[str]:
    """Names of the images in ``builds_dir`` (``<name>.in`` files with valid names)."""
    if not builds_dir.is_dir():
        return []
    names = []
    for path in builds_dir.glob("*.in"):
        try:
            names.append(validate_image_name(path.name[:-3]))
        except ConfigError:
            continue
    return sorted(names)


def build_file_for(settings: Settings, image: str) -> Path:
    """``builds/<image>.in``; an :class:`InputError` listing the images when it does not exist.

    The name is validated first (no ``/``, no ``..``), so the path cannot leave ``builds/``.
    """
    validate_image_name(image)
    path = settings.builds_dir / f"{image}.in"
    if not path.is_file():
        known = list_images(settings.builds_dir)
        raise InputError(
            f"unknown image {image!r}: {path} does not exist",
            hint=(f"images in {settings.builds_dir}: {', '.join(known)}" if known
                  else f"no build files (*.in) in {settings.builds_dir}"),
        )
    return path


def build_arguments(settings: Settings, image: str, registry: str, upstream_registry: str,
                    base_image_tag: str | None = None) -> dict[str, str]:
    """Build args of every build (CONTRACT): REGISTRY, UPSTREAM_REGISTRY, BASE_IMAGE_TAG, then
    ``settings.build_args`` and the image's own ``build_args`` (later ones win)."""
    args = {
        "REGISTRY": registry,
        "UPSTREAM_REGISTRY": upstream_registry,
        "BASE_IMAGE_TAG": settings.base_image_tag,
    }
    args.update(settings.build_args)
    args.update(settings.image_settings(image).build_args)
    if base_image_tag is not None:
        args["BASE_IMAGE_TAG"] = base_image_tag
    return args


def oci_labels(source: str | None, revision: str | None, created: str) -> dict[str, str]:
    """The OCI annotations kiln sets; unknown source/revision are left out, never guessed."""
    labels: dict[str, str] = {}
    if source:
        labels["org.opencontainers.image.source"] = source
    if revision:
        labels["org.opencontainers.image.revision"] = revision
    labels["org.opencontainers.image.created"] = created
    return labels


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def strip_userinfo(url: str) -> str:
    """``https://user:token@host/x`` -> ``https://host/x``: a remote URL may carry a token."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url, flags=re.IGNORECASE)


# -- FROM lines (pure; read by kiln.containerfile) -------------------------------------------

def own_dependencies(froms: Sequence[FromLine], registry: str, known_images: Sequence[str],
                     *, exclude: str | None = None) -> list[tuple[str, str]]:
    """(image name, reference) of every FROM naming one of our images: ``<registry>/<name>...``
    where ``builds/<name>.in`` exists. Earlier stage names are not images."""
    prefix = registry.rstrip("/") + "/"
    aliases: set[str] = set()
    result: list[tuple[str, str]] = []
    for line in froms:
        image = line.image
        if image.lower() in aliases:
            continue
        if line.alias:
            aliases.add(line.alias.lower())
        if not image.startswith(prefix):
            continue
        name = re.split(r"[:@]", image[len(prefix):], maxsplit=1)[0]
        if name in known_images and name != exclude and (name, image) not in result:
            result.append((name, image))
    return result


def upstream_names(froms: Sequence[FromLine], upstream_registry: str) -> list[str]:
    """``library/debian:bookworm`` for each FROM under ``upstream_registry``."""
    prefix = upstream_registry.rstrip("/") + "/"
    names: list[str] = []
    for line in froms:
        if line.image.startswith(prefix):
            name = line.image[len(prefix):]
            if name not in names:
                names.append(name)
    return names


def platform_mismatch(output: str) -> str | None:
    """The base image's architecture when buildah warns it is not the one asked for.

    buildah 1.28 only warns ("image platform ({amd64 linux ...}) does not match the expected
    platform") and then builds, so an "arm64" image would contain amd64 binaries.
    """
    match = re.search(r"image platform \(\{(\S+) (\S+)[^)]*\) does not match the expected "
                      r"platform", output)
    return match[1] if match else None


# -- the plan (pure, given a loader and an existence check) --------------------------------------

@dataclass(frozen=True)
class Target:
    """Where images go: our registry prefix, the upstream prefix, push or not."""

    registry: str
    upstream_registry: str
    push: bool
    local: bool = False


def resolve_target(settings: Settings, local_address: str | None) -> Target:
    """The target for these settings; ``local_address`` is the embedded registry (if running).
    Which registry: :func:`kiln.registry.access.configured_registry` decides."""
    configured = access.configured_registry(settings)
    if configured is not None:
        return Target(configured, settings.upstream_registry,
                      True if settings.push is None else settings.push)
    address = local_address or LOCAL_PLACEHOLDER
    upstream = settings.upstream_registry
    if upstream == "docker.io":
        upstream = f"{address}/mirror"
    return Target(address, upstream, True if settings.push is None else settings.push, local=True)


@dataclass(frozen=True)
class Step:
    """One image to build, fully decided."""

    image: str
    arch: str | None
    ref: str
    text: str
    build_args: Mapping[str, str]
    froms: tuple[FromLine, ...]
    dependency: bool = False
    built_deps: tuple[str, ...] = ()


def plan_builds(
    image: str,
    *,
    arch: str | None,
    target: Target,
    pipeline_id: str,
    known_images: Sequence[str],
    load: Callable[[str], str],
    args_for: Callable[[str, str | None], dict[str, str]],
    exists: Callable[[str], bool],
    deps: bool = True,
) -> list[Step]:
    """The builds needed for ``image``, dependencies first.

    ``load(name)`` gives a preprocessed Containerfile, ``args_for(name, base_image_tag)`` its
    build args, ``exists(ref)`` whether an image is available. Without ``deps`` only ``image``.
    """
    texts: dict[str, str] = {}
    graph: dict[str, list[tuple[str, str]]] = {}

    def explore(name: str, chain: tuple[str, ...]) -> None:
        if name in chain:
            cycle = " -> ".join((*chain[chain.index(name):], name))
            raise InputError(f"dependency cycle between images: {cycle}",
                             hint="an image cannot be built FROM itself through other images")
        if name in graph:
            return
        texts[name] = load(name)
        froms = parse_from_lines(texts[name], args_for(name, None))
        graph[name] = own_dependencies(froms, target.registry, known_images, exclude=name)
        if deps:
            for dep, _ in graph[name]:
                explore(dep, (*chain, name))

    explore(image, ())
    tag = pipeline_tag(pipeline_id, arch)
    decided: dict[str, Step] = {}
    order: list[Step] = []

    def decide(name: str, dependency: bool) -> Step:
        if name in decided:
            return decided[name]
        direct = graph[name] if deps else []
        build_deps = bool(direct) and any(
            dep in decided or not exists(ref) for dep, ref in direct
        )
        built: list[str] = []
        if build_deps:
            for dep, _ in direct:
                decide(dep, True)
                built.append(dep)
        args = args_for(name, tag if build_deps else None)
        froms = tuple(parse_from_lines(texts[name], args))
        if build_deps:
            for dep, ref in own_dependencies(froms, target.registry, known_images, exclude=name):
                if dep in built and ref != decided[dep].ref:
                    raise InputError(
                        f"{name}: FROM {ref} does not follow BASE_IMAGE_TAG, so kiln cannot use "
                        f"the {decided[dep].ref} it builds for it",
                        hint=f"write FROM ${{REGISTRY}}/{dep}:${{BASE_IMAGE_TAG}} in "
                             f"builds/{name}.in, or build {dep} and tag it first",
                    )
        step = Step(name, arch, image_ref(target.registry, name, pipeline_id, arch),
                    texts[name], args, froms, dependency, tuple(built))
        decided[name] = step
        order.append(step)
        return step

    decide(image, False)
    return order


# -- argv (pure) ------------------------------------------------------------------------------

def tls_verify_for(settings: Settings, target: Target) -> bool:
    """``--tls-verify`` of a build: off when a registry it pulls from speaks plain HTTP."""
    return (access.tls_verify(settings, target.registry)
            and access.tls_verify(settings, target.upstream_registry))


def build_command(buildah: Buildah, settings: Settings, step: Step, target: Target, *,
                  containerfile: Path, labels: Mapping[str, str],
                  authfile: Path | None = None, cert_dir: Path | None = None) -> list[str]:
    """The exact ``buildah build`` argv for ``step``."""
    volumes = [f"{settings.ca_bundle}:{CA_TARGET}:ro"] if settings.ca_bundle else []
    return buildah.build_command(
        containerfile=containerfile,
        context=settings.context_dir or settings.project_dir,
        tag=step.ref,
        image_format=settings.image_format,
        layers=settings.layers,
        platform=f"linux/{step.arch}" if step.arch else None,
        tls_verify=tls_verify_for(settings, target),
        build_args=step.build_args,
        labels=labels,
        volumes=volumes,
        authfile=authfile,
        cert_dir=cert_dir,
        secrets=settings.build_secrets,
    )


def push_command(buildah: Buildah, settings: Settings, step: Step, target: Target, *,
                 authfile: Path | None = None, digestfile: Path | None = None,
                 cert_dir: Path | None = None) -> list[str]:
    return buildah.push_command(
        step.ref,
        manifest_format=push_format(settings.image_format),
        tls_verify=access.tls_verify(settings, target.registry),
        authfile=authfile,
        digestfile=digestfile,
        cert_dir=cert_dir,
    )


def registry_hosts(settings: Settings, target: Target) -> set[str]:
    """The hosts a build pulls from and pushes to, plus our own registry hosts: the ones whose
    credentials buildah gets (:func:`kiln.registry.access.tool_access`)."""
    return access.own_registry_hosts(settings) | {
        access.registry_host(target.registry), access.registry_host(target.upstream_registry)}


def registry_access(settings: Settings, target: Target) -> AbstractContextManager[ToolAccess]:
    """buildah's auth file and cert dir (temporary, removed afterwards); the configured auth
    file's entries are kept, since FROM lines may name any registry."""
    return access.tool_access(settings, registry_hosts(settings, target), keep_auth_file=True)


# -- I/O ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildResult:
    """What one image build produced."""

    image: str
    arch: str | None
    ref: str
    containerfile: Path
    digest: str | None = None
    pushed: bool = False
    dependency: bool = False
    commands: tuple[tuple[str, ...], ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, object]:
        return {"image": self.image, "arch": self.arch, "ref": self.ref,
                "digest": self.digest, "pushed": self.pushed, "dependency": self.dependency,
                "containerfile": str(self.containerfile)}


def containerfile_path(settings: Settings, image: str) -> Path:
    return settings.state_dir / "build" / image / "Containerfile"


def preprocess_image(settings: Settings, image: str) -> str:
    """The Containerfile text of ``builds/<image>.in``; warnings go to the console with file:line."""
    from kiln.preprocess import default_include_path, preprocess_file

    path = build_file_for(settings, image)
    context = settings.context_dir or settings.project_dir
    includes = settings.includes_dir if settings.includes_dir.is_dir() else None
    result = preprocess_file(path, default_include_path(context, includes), None,
                             strict=settings.strict)
    for diag in result.diagnostics:
        console.warn(f"{diag.file}:{diag.line}: {diag.message}")
    return str(result.text)


def source_metadata(settings: Settings,
                    env: Mapping[str, str] | None = None) -> tuple[str | None, str | None, str]:
    """(source URL, revision, created) for the OCI labels.

    Source and revision come from GitLab's variables, else from git; ``None`` when unknown.
    ``created`` is the commit time (``SOURCE_DATE_EPOCH`` when set, now when neither exists):
    a label that changed on every build would give every rebuilt dependency a new image ID and
    so defeat the layer cache of every image built FROM it.
    """
    env = os.environ if env is None else env
    source = settings.ci.project_url
    revision = settings.ci.commit_sha
    epoch: str | None = env.get("SOURCE_DATE_EPOCH") or None
    try:
        proc.which("git")
        has_git = True
    except KilnError:
        has_git = False
    if has_git:
        git = ["git", "-C", str(settings.project_dir)]
        if source is None:
            result = proc.run([*git, "config", "--get", "remote.origin.url"], check=False)
            if result.returncode == 0 and result.stdout.strip():
                source = strip_userinfo(result.stdout.strip())
        if revision is None:
            result = proc.run([*git, "rev-parse", "--verify", "-q", "HEAD"], check=False)
            if result.returncode == 0 and result.stdout.strip():
                revision = result.stdout.strip()
        if epoch is None:
            result = proc.run([*git, "log", "-1", "--format=%ct", revision or "HEAD"],
                              check=False)
            if result.returncode == 0 and result.stdout.strip().isdigit():
                epoch = result.stdout.strip()
    created = utc_now()
    if epoch is not None and epoch.strip().isdigit():
        created = datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return source, revision, created


def _exists_check(settings: Settings, target: Target, buildah: Buildah,
                  registry_up: bool) -> Callable[[str], bool]:
    from kiln.registry.reference import parse_reference

    cache: dict[str, bool] = {}

    def exists(ref: str) -> bool:
        if ref not in cache:
            found = False
            if registry_up:
                parsed = parse_reference(ref)
                with open_client(parsed.host, settings) as client:
                    found = client.head_manifest(parsed.repository, parsed.reference) is not None
            if not found and not target.push:
                found = buildah.image_exists(ref)
            cache[ref] = found
        return cache[ref]

    return exists


def _local_target(settings: Settings) -> tuple[Target, bool]:
    """The target, and whether its registry is up (the embedded registry is started when it is
    the target, except in a dry run)."""
    chosen = access.target_registry(settings)
    if not chosen.local:
        return resolve_target(settings, None), True
    return resolve_target(settings, chosen.prefix), chosen.prefix is not None


def plan_image(settings: Settings, image: str, arch: str | None = None) -> tuple[Target, list[Step]]:
    """Resolve the target and the list of builds (dependencies first) for ``image``."""
    build_file_for(settings, image)
    if arch is not None:
        arch = normalize_arch(arch)
    target, registry_up = _local_target(settings)
    buildah = Buildah.from_settings(settings)
    known = list_images(settings.builds_dir)
    texts: dict[str, str] = {}

    def load(name: str) -> str:
        if name not in texts:
            texts[name] = preprocess_image(settings, name)
        return texts[name]

    def args_for(name: str, base_tag: str | None) -> dict[str, str]:
        return build_arguments(settings, name, target.registry, target.upstream_registry, base_tag)

    steps = plan_builds(
        image, arch=arch, target=target, pipeline_id=settings.pipeline_id, known_images=known,
        load=load, args_for=args_for, exists=_exists_check(settings, target, buildah, registry_up),
        deps=settings.deps,
    )
    return target, steps


def build(settings: Settings, image: str, arch: str | None = None) -> list[BuildResult]:
    """Build ``image`` (and missing dependencies), natively or for ``arch``; push per target.

    In a dry run, prints the plan (paths, exact commands) on stdout and changes nothing.
    """
    buildah = Buildah.from_settings(settings)
    problems: list[str] = []
    if arch is not None:
        arch = normalize_arch(arch)
        try:
            qemu.check_binfmt(arch)
        except ToolMissingError as exc:
            if not settings.dry_run:
                raise
            problems.append(str(exc))
    if not settings.dry_run:
        proc.which("buildah")
    if settings.ca_bundle is not None and not settings.ca_bundle.is_file():
        raise ConfigError(f"CA bundle {settings.ca_bundle} does not exist",
                          hint="set KILN_CA_BUNDLE / ca-bundle to an existing PEM file")
    target, steps = plan_image(settings, image, arch)
    labels = oci_labels(*source_metadata(settings))
    refuse_credentials(settings, steps, labels)
    if settings.dry_run:
        return _print_plan(settings, buildah, target, steps, labels, problems)
    results: list[BuildResult] = []
    with registry_access(settings, target) as tools:
        for step in steps:
            results.append(_run_step(settings, buildah, target, step, labels, tools.authfile,
                                     tools.cert_dir))
    return results


def refuse_credentials(settings: Settings, steps: Sequence[Step],
                       labels: Mapping[str, str]) -> None:
    """Before anything is built (dry run included): no credential-looking build arg, label, or
    ENV/LABEL/ARG value or token in any Containerfile (:mod:`kiln.credentials`; exit code 2).

    Outside a dry run the Containerfiles are written first, so the file:line in the message
    can be opened (``invoke preprocess`` prints the same text)."""
    for step in steps:
        containerfile = containerfile_path(settings, step.image)
        if not settings.dry_run:
            containerfile.parent.mkdir(parents=True, exist_ok=True)
            containerfile.write_text(step.text, encoding="utf-8")
        credentials.check_build_inputs(step.image, step.text, str(containerfile),
                                       step.build_args, labels=labels,
                                       allow=settings.secret_allow,
                                       build_file=f"builds/{step.image}.in")


def refuse_secret_config(settings: Settings, step: Step, config: Mapping[str, object]) -> None:
    """Refuse to push ``step``'s image when its config (Env, Labels, history) carries a
    credential, whatever its base image or build args brought in (pure)."""
    credentials.check_built_image(
        step.ref, config, allow=settings.secret_allow,
        hint_prefix="nothing was pushed; the image is in local storage only (remove it: "
                    f"buildah rmi {step.ref}). ")


def scan_built_image(settings: Settings, buildah: Buildah, step: Step) -> None:
    """After the build, before the push: read the image's config and refuse credentials in it."""
    refuse_secret_config(settings, step, buildah.inspect_config(step.ref))


def _seed(settings: Settings, target: Target, step: Step, *, dry_run: bool) -> list[str]:
    """Offline upstream images the step needs in the embedded registry (local flow only)."""
    if not target.local or not target.upstream_registry.startswith(target.registry + "/"):
        return []
    names = upstream_names(step.froms, target.upstream_registry)
    if not names:
        return []
    seedable = [n for n in names if n in seed.UPSTREAM_IMAGES]
    unknown = [n for n in names if n not in seed.UPSTREAM_IMAGES]
    if dry_run:
        return seedable
    if seedable:
        pushed = seed.seed_upstream(settings, target.registry, names=seedable)
        for ref in pushed:
            console.step(f"seeded {ref}")
    if unknown:
        with open_client(target.registry, settings) as client:
            for name in unknown:
                repo, _, tag = name.partition(":")
                if client.head_manifest(f"mirror/{repo}", tag or "latest") is None:
                    line = next(f for f in step.froms if f.image.endswith("/" + name))
                    raise InputError(
                        f"{step.image}: Containerfile line {line.line}: {line.image} is not in the "
                        "embedded registry and kiln cannot create it offline",
                        hint=f"offline images: {', '.join(sorted(seed.UPSTREAM_IMAGES))}; "
                             "mirror it (invoke mirror) or set KILN_UPSTREAM_REGISTRY",
                    )
    return seedable


def _run_step(settings: Settings, buildah: Buildah, target: Target, step: Step,
              labels: Mapping[str, str], authfile: Path | None,
              cert_dir: Path | None) -> BuildResult:
    key = f"{step.image}{'_' + step.arch if step.arch else ''}"
    what = "dependency " if step.dependency else ""
    with console.section(f"build_{key}", f"build {what}{step.image} -> {step.ref}"):
        argv, containerfile = _build_step(settings, buildah, target, step, labels, authfile,
                                          cert_dir)
    if not target.push:
        console.step(f"built {step.ref} (local storage only, not pushed)")
        return BuildResult(step.image, step.arch, step.ref, containerfile, None, False,
                           step.dependency, (tuple(argv),))
    with console.section(f"push_{key}", f"push {step.ref}"), \
            console.activity(f"pushing {step.ref}"), \
            tempfile.TemporaryDirectory(prefix="kiln-push-") as tmp:
        digestfile = Path(tmp) / "digest"
        push = push_command(buildah, settings, step, target, authfile=authfile,
                            digestfile=digestfile, cert_dir=cert_dir)
        pushed = proc.run(push, error=BuildError, what=f"push of {step.ref}", stream=True,
                          check=False)
        if pushed.returncode != 0:
            raise _push_failure(step, pushed)
        digest = digestfile.read_text(encoding="utf-8").strip() if digestfile.exists() else None
    console.step(f"pushed {step.ref}" + (f"@{digest}" if digest else ""))
    return BuildResult(step.image, step.arch, step.ref, containerfile, digest, True,
                       step.dependency, (tuple(argv), tuple(push)))


def _build_step(settings: Settings, buildah: Buildah, target: Target, step: Step,
                labels: Mapping[str, str], authfile: Path | None,
                cert_dir: Path | None) -> tuple[list[str], Path]:
    """Seed, build and check one image (inside its log section); returns (argv, Containerfile)."""
    _seed(settings, target, step, dry_run=False)
    containerfile = containerfile_path(settings, step.image)
    containerfile.parent.mkdir(parents=True, exist_ok=True)
    containerfile.write_text(step.text, encoding="utf-8")
    what = "dependency " if step.dependency else ""
    console.step(f"building {what}{step.image} -> {step.ref} (Containerfile: {containerfile})")
    argv = build_command(buildah, settings, step, target, containerfile=containerfile,
                         labels=labels, authfile=authfile, cert_dir=cert_dir)
    result = proc.run(argv, error=BuildError, what=f"build of {step.image}", stream=True,
                      check=False)
    if result.returncode != 0:
        raise _build_failure(step, containerfile, result)
    mismatch = platform_mismatch(result.stdout + result.stderr)
    if step.arch and mismatch:
        # With every step cached, buildah just adds the name to the other architecture's image:
        # take the name off again so local storage does not claim an arm64 image either.
        buildah.run("rmi", step.ref, what=f"untag {step.ref}", check=False)
        raise BuildError(
            f"build of {step.image} for {step.arch} used a base image for {mismatch}: "
            f"buildah would label {mismatch} binaries as {step.arch}",
            hint=f"the FROM image must provide linux/{step.arch} (a multi-arch manifest list or "
                 f"a {step.arch} image); nothing was pushed",
        )
    scan_built_image(settings, buildah, step)
    return argv, containerfile


_TRANSIENT = re.compile(r"connection refused|no such host|i/o timeout|connection reset|"
                        r"TLS handshake timeout|too many requests|toomanyrequests|"
                        r"\b(?:429|500|502|503|504)\b|Internal Server Error|Bad Gateway|"
                        r"Service Unavailable|Gateway Timeout|unexpected EOF|\bEOF\b|"
                        r"broken pipe|server closed|timed out|Client\.Timeout",
                        re.IGNORECASE)
_AUTH = re.compile(r"unauthorized|authentication required|denied: requested access|"
                   r"403 Forbidden|invalid username/password", re.IGNORECASE)
_MISSING = re.compile(r"manifest unknown|not found: manifest|name unknown|"
                      r"reading manifest [^ ]+ in [^ ]+: ", re.IGNORECASE)


def classify_failure(output: str, instruction: str | None) -> tuple[type[KilnError], str]:
    """The error class and hint for a failed buildah build/push, from its output.

    A RUN step that fails is a build failure (exit 5); a registry that cannot be reached is
    transient (4, worth a retry); refused credentials are an auth error (3); a FROM image that
    does not exist is bad input (2).
    """
    registry_step = instruction is None or instruction.upper().startswith("FROM")
    if registry_step or "pushing" in output.lower() or "writing blob" in output.lower():
        if _AUTH.search(output):
            return RegistryAuthError, ("check the credentials (CI_REGISTRY_USER/"
                                       "CI_REGISTRY_PASSWORD or the auth file) and that they "
                                       "may read/write this repository")
        if _TRANSIENT.search(output):
            return RegistryTransientError, ("the registry is unreachable or overloaded; rerun "
                                            "later (or start it: invoke registry-start)")
        if instruction is not None and _MISSING.search(output):
            return InputError, ("the base image does not exist: build or mirror it first, or "
                                "fix the FROM line / BASE_IMAGE_TAG")
    return BuildError, "fix the step and run the build again"


def _build_failure(step: Step, containerfile: Path, result: proc.Result) -> KilnError:
    output = result.stdout + result.stderr
    instruction = failing_step(output)
    line = locate_step(step.text, instruction) if instruction else None
    if line is None and instruction and instruction.upper().startswith("FROM "):
        words = [w for w in instruction.split()[1:] if not w.startswith("--")]
        line = next((f.line for f in step.froms if words and f.image == words[0]), None)
    where = f"{containerfile}:{line}" if line else str(containerfile)
    tail = "\n".join("    " + text for text in output.rstrip().splitlines()[-40:])
    message = (f"build of {step.image} ({step.ref}) failed"
               + (f" at step {instruction!r}" if instruction else "")
               + f"\n  Containerfile: {where} (from builds/{step.image}.in)"
               + f"\n  exit code {result.returncode}; last output:\n{console.mask(tail)}")
    error, hint = classify_failure(output, instruction)
    return error(message, hint=f"nothing was pushed; {hint}")


def _push_failure(step: Step, result: proc.Result) -> KilnError:
    output = result.stdout + result.stderr
    tail = "\n".join("    " + text for text in output.rstrip().splitlines()[-20:])
    error, hint = classify_failure("pushing\n" + output, None)
    if error is BuildError:
        error, hint = RegistryError, "see the registry's answer above"
    return error(f"push of {step.ref} failed (exit {result.returncode}); last output:\n"
                 f"{console.mask(tail)}",
                 hint=f"{hint}; the tag was not written (a registry writes a tag only with a "
                      "complete manifest), so rerunning is safe")


def _print_plan(settings: Settings, buildah: Buildah, target: Target, steps: Sequence[Step],
                labels: Mapping[str, str], problems: Sequence[str] = ()) -> list[BuildResult]:
    """The dry run: what would happen, as exact commands, on stdout (and what would fail)."""
    planned = access.planned_tool_access(settings, registry_hosts(settings, target),
                                         keep_auth_file=True)
    authfile, cert_dir = planned.authfile, planned.cert_dir
    lines = ["# kiln build plan (dry run: nothing is built, written or pushed)"]
    lines += [f"# PROBLEM (the real run stops here): {p}" for p in problems]
    if target.local:
        if target.registry == LOCAL_PLACEHOLDER:
            lines.append(f"start the embedded local registry (data in "
                         f"{settings.state_dir / 'registry'})")
        else:
            lines.append(f"use the embedded local registry at {target.registry}")
    results = []
    for step in steps:
        containerfile = containerfile_path(settings, step.image)
        lines.append(f"# {step.image}" + (" (dependency: missing in the target)"
                                          if step.dependency else ""))
        seeds = _seed(settings, target, step, dry_run=True)
        if seeds:
            lines.append(f"seed offline upstream images into {target.registry}/mirror: "
                         + ", ".join(seeds))
        lines.append(f"write {containerfile} (preprocessed builds/{step.image}.in)")
        argv = build_command(buildah, settings, step, target, containerfile=containerfile,
                             labels=labels, authfile=authfile, cert_dir=cert_dir)
        lines.append(shlex.join(argv))
        commands = [tuple(argv)]
        if target.push:
            push = push_command(buildah, settings, step, target, authfile=authfile,
                                digestfile=Path("<digest file>"), cert_dir=cert_dir)
            lines.append(shlex.join(push))
            commands.append(tuple(push))
        else:
            lines.append(f"(not pushed: {step.ref} stays in local storage)")
        results.append(BuildResult(step.image, step.arch, step.ref, containerfile, None, False,
                                   step.dependency, tuple(commands)))
    for line in lines:
        console.plan(line)
    return results
