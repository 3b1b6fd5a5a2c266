"""Building images, the I/O: preprocess, resolve digests, look up input keys, build, push.

:mod:`kiln.build.plan` decides (pure); this module asks the tools and the registry. Decisions
where the issues were silent:

* **Build context** = the project directory (``context_dir`` overrides), so a build file can
  ``COPY services/backend /code``. Includes are searched as buildah's ``.in`` handling does
  (``cpp -iquote <context>``): the context, then the repo's ``includes/``, then kiln's shipped
  includes (``kiln.preprocess.default_include_path``).
* **Containerfile** is written to ``<state_dir>/build/<image>/Containerfile`` (``...-<arch>``
  for build-arch) and kept: a failing step's error names its line there. It is the pinned text:
  every FROM image by digest.
* **Target registry**: ``settings.registry`` when set (pushes by default); in CI without one,
  a configuration error; otherwise the embedded local registry (started on demand), with
  ``UPSTREAM_REGISTRY=<address>/mirror`` (unless ``upstream_registry`` is configured to
  something other than ``docker.io``) seeded offline by :mod:`kiln.seed`. ``--no-push`` keeps the
  image in local storage only (no input key, no reuse).
* **TLS, CA bundle, credentials**: :mod:`kiln.registry.access` decides for every tool and the
  HTTP client alike; ``ca_bundle`` is bind-mounted read-only for RUN steps only.
* **Graph** (``deps``, default on): an image and every image of ours it is built FROM are
  planned together (:mod:`kiln.build.graph`), dependencies first, independent images in
  parallel (``jobs``). Each is looked up by its input key (tag ``k-<hex>``, label
  ``dev.kiln.input-key``): found, ``p-<id>[-<arch>]`` is a manifest copy of it; otherwise it is
  built (``--timestamp`` = the commit time) and pushed as ``p-<id>[-<arch>]`` and ``k-<hex>``.
  Dependents are built FROM the digest this run produced. ``--no-deps`` builds only the image,
  FROM whatever its FROM lines name. ``rebuild`` builds even when the key is found.
"""

from __future__ import annotations

import os
import re
import shlex
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from kiln import console, credentials, proc, promote, qemu, seed
from kiln.arch import host_arch, normalize_arch
from kiln.build.graph import ImageGraph, Node
from kiln.build.plan import (
    KEY_LABEL,
    IgnoreRules,
    Source,
    Step,
    Target,
    build_arguments,
    build_file_for,
    context_entries,
    copy_sources,
    declare_after_from,
    dependency_tag,
    image_deps,
    image_name_in,
    input_key,
    list_images,
    make_graph,
    make_step,
    oci_labels,
    pin_from_lines,
    platform_mismatch,
    push_format,
    read_sources,
    strip_reference,
    strip_userinfo,
    upstream_names,
    utc_now,
)
from kiln.buildah import Buildah, failing_step
from kiln.containerfile import locate_step, parse_from_lines
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
from kiln.registry import access, media
from kiln.registry.access import ToolAccess
from kiln.registry.client import RegistryClient, open_client
from kiln.registry.reference import is_docker_hub, parse_reference
from kiln.settings import Settings
from kiln.state_dir import ensure_state_dir
from kiln.tag_policy import key_tag

# KILN_CA_BUNDLE is mounted here for RUN steps (read-only, never in a layer) and not over the
# system bundle, so update-ca-certificates still works in builds; the CA_VARIABLES point TLS
# clients at it (build args declared after each FROM by ca_bundle_text: RUN steps see them, the
# image config does not). apt reads only the system bundle.
CA_TARGET = "/run/kiln/ca-bundle.crt"
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "CURL_CA_BUNDLE",
                "GIT_SSL_CAINFO", "NODE_EXTRA_CA_CERTS")
LOCAL_PLACEHOLDER = "127.0.0.1:<port>"


def ca_bundle_text(text: str) -> str:
    """``text`` with ``ARG <CA_VARIABLES>`` after each FROM: the build args kiln passes with a
    CA bundle reach the RUN steps of every stage (an undeclared build arg does not)."""
    return declare_after_from(text, CA_VARIABLES)


def resolve_target(settings: Settings, local_address: str | None) -> Target:
    """The target for these settings; ``local_address`` is the embedded registry (if running).
    Which registry: :func:`kiln.registry.access.configured_registry` decides."""
    configured = access.configured_registry(settings)
    if configured is not None:
        return Target(configured, settings.upstream_registry,
                      True if settings.push is None else settings.push)
    address = local_address or LOCAL_PLACEHOLDER
    upstream = settings.upstream_registry
    if is_docker_hub(upstream):
        upstream = f"{address}/mirror"
    return Target(address, upstream, True if settings.push is None else settings.push, local=True)


# -- argv (pure) ------------------------------------------------------------------------------

def tls_verify_for(settings: Settings, target: Target) -> bool:
    """``--tls-verify`` of a build: off when a registry it pulls from speaks plain HTTP."""
    return (access.tls_verify(settings, target.registry)
            and access.tls_verify(settings, target.upstream_registry))


def build_command(buildah: Buildah, settings: Settings, step: Step, target: Target, *,
                  containerfile: Path, labels: Mapping[str, str],
                  authfile: Path | None = None, cert_dir: Path | None = None,
                  timestamp: int | None = None) -> list[str]:
    """The exact ``buildah build`` argv for ``step``: its input key as a label, created times
    fixed to ``timestamp`` (the commit time) when known, which RUN steps also get as
    ``SOURCE_DATE_EPOCH`` (declared by :func:`kiln.build.plan.declare_after_from`)."""
    if step.key is not None:
        labels = {**labels, KEY_LABEL: step.key}
    volumes = [f"{settings.ca_bundle}:{CA_TARGET}:ro"] if settings.ca_bundle else []
    build_args = dict(step.build_args)
    if timestamp is not None:
        build_args["SOURCE_DATE_EPOCH"] = str(timestamp)
    if settings.ca_bundle:
        build_args.update(dict.fromkeys(CA_VARIABLES, CA_TARGET))
    return buildah.build_command(
        containerfile=containerfile,
        context=settings.context_dir or settings.project_dir,
        tag=step.ref,
        image_format=settings.image_format,
        layers=settings.layers,
        platform=f"linux/{step.arch}" if step.arch else None,
        tls_verify=tls_verify_for(settings, target),
        build_args=build_args,
        labels=labels,
        volumes=volumes,
        authfile=authfile,
        cert_dir=cert_dir,
        secrets=settings.build_secrets,
        timestamp=timestamp,
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
def containerfile_path(settings: Settings, image: str, arch: str | None = None) -> Path:
    """Where the Containerfile of ``image`` is written (one per architecture for build-arch,
    so parallel builds of two architectures never share it)."""
    return settings.state_dir / "build" / (f"{image}-{arch}" if arch else image) / "Containerfile"


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


def source_epoch(settings: Settings, env: Mapping[str, str] | None = None) -> int | None:
    """The build's fixed timestamp: ``SOURCE_DATE_EPOCH``, else the commit time (``None`` when
    neither is known: then buildah uses the current time)."""
    return _source_facts(settings, env)[3]


def source_metadata(settings: Settings,
                    env: Mapping[str, str] | None = None) -> tuple[str | None, str | None, str]:
    """(source URL, revision, created) for the OCI labels.

    Source and revision come from GitLab's variables, else from git; ``None`` when unknown.
    ``created`` is the commit time (``SOURCE_DATE_EPOCH`` when set, now when neither exists):
    a label that changed on every build would give every rebuilt dependency a new image ID and
    so defeat the layer cache of every image built FROM it.
    """
    return _source_facts(settings, env)[:3]


def _source_facts(settings: Settings, env: Mapping[str, str] | None
                  ) -> tuple[str | None, str | None, str, int | None]:
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
    seconds = int(epoch.strip()) if epoch is not None and epoch.strip().isdigit() else None
    if seconds is not None:
        created = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return source, revision, created, seconds


def _local_target(settings: Settings, *, start: bool = True) -> tuple[Target, bool]:
    """The target, and whether its registry is up (the embedded registry is started when it is
    the target and ``start``, except in a dry run)."""
    chosen = access.target_registry(settings, start=start)
    if not chosen.local:
        return resolve_target(settings, None), True
    return resolve_target(settings, chosen.prefix), chosen.prefix is not None


def _external_check(settings: Settings, target: Target, registry_up: bool
                    ) -> Callable[[str], bool]:
    """Whether a FROM image of our registry that has no build file exists there (made by
    another project: used as it is). Unanswerable (dry run, registry not running): assumed."""
    def exists(ref: str) -> bool:
        if settings.dry_run or not registry_up:
            return True
        with Registries(settings) as registries:
            return registries.find(ref) is not None
    return exists


@dataclass(frozen=True)
class Plan:
    """What one build run does: the target, the graph (dependencies first) and its sources."""

    target: Target
    graph: ImageGraph
    sources: Mapping[str, Source]
    roots: tuple[str, ...]
    arch: str | None
    registry_up: bool = True

    def steps(self, pipeline_id: str) -> list[Step]:
        """One step per image in build order, before input keys."""
        return [make_step(self.sources[name], target=self.target, pipeline_id=pipeline_id,
                          arch=self.arch, dependency=name not in self.roots,
                          built_deps=self.graph.nodes[name].deps)
                for name in self.graph.order()]


def plan_graph(settings: Settings, roots: Sequence[str], arch: str | None = None, *,
               inspect: Callable[[Source], None] | None = None, start: bool = True) -> Plan:
    """Read the build files of ``roots`` (and, with ``deps``, of every image of ours they are
    built FROM) into a graph; errors for unknown images, cycles and missing build files.
    ``inspect`` sees each source as soon as it is read: the credential check comes first."""
    roots = tuple(dict.fromkeys(roots))
    for name in roots:
        build_file_for(settings, name)
    if arch is not None:
        arch = normalize_arch(arch)
    target, registry_up = _local_target(settings, start=start)
    known = list_images(settings.builds_dir)
    context = settings.context_dir or settings.project_dir

    def load(name: str) -> Source:
        text = preprocess_image(settings, name)
        args = build_arguments(settings, name, target.registry, target.upstream_registry)
        froms = parse_from_lines(text, args)
        has_deps = any(image_name_in(f.image, target.registry) in known for f in froms
                       if f.is_image and not f.image.startswith(target.upstream_registry + "/"))
        if settings.deps and has_deps:
            args = build_arguments(settings, name, target.registry, target.upstream_registry,
                                   dependency_tag(settings.pipeline_id, arch))
            froms = parse_from_lines(text, args)
        rel = os.path.relpath(containerfile_path(settings, name, arch), context)
        source = Source(name, f"builds/{name}.in", rel, text, args, tuple(froms),
                        build_sources(settings, name))
        if inspect is not None:
            inspect(source)
        return source

    external = _external_check(settings, target, registry_up)
    sources = read_sources(roots, load, registry=target.registry,
                           upstream_registry=target.upstream_registry, known_images=known,
                           follow=settings.deps, external=external)
    if settings.deps:
        graph = make_graph(sources, registry=target.registry,
                           upstream_registry=target.upstream_registry, known_images=known,
                           arches=(arch or host_arch(),), external=external)
    else:
        for src in sources.values():  # still an error: FROM an image without a build file
            image_deps(src, target.registry, target.upstream_registry, known, external)
        graph = ImageGraph({name: Node(name, (arch or host_arch(),), (), src.file)
                            for name, src in sources.items()})
    return Plan(target, graph, sources, roots, arch, registry_up)


# -- registry answers -------------------------------------------------------------------------

class Registries:
    """Registry clients by host for one run (thread-safe), and the answers kiln needs: a FROM
    image's digest for one platform, a key tag's manifest, a manifest copy."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stack = ExitStack()
        self._clients: dict[str, RegistryClient] = {}
        self._lock = threading.Lock()
        self._digests: dict[tuple[str, str], str] = {}

    def __enter__(self) -> Registries:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def client(self, host: str) -> RegistryClient:
        with self._lock:
            if host not in self._clients:
                self._clients[host] = self._stack.enter_context(open_client(host, self.settings))
            return self._clients[host]

    def platform_digest(self, ref: str, arch: str) -> str:
        """The digest of ``ref``'s image for linux/``arch`` (a list's child, or the image).
        A missing image is an :class:`InputError`."""
        cache_key = (ref, arch)
        if cache_key in self._digests:
            return self._digests[cache_key]
        parsed = parse_reference(ref)
        client = self.client(parsed.host)
        manifest = client.get_manifest(parsed.repository, parsed.reference) if self.exists(
            client, parsed.repository, parsed.reference, ref) else None
        assert manifest is not None
        digest = manifest.digest
        if manifest.is_index:
            children = [c for c in media.index_children(manifest.body, ref)
                        if (c.platform or {}).get("architecture") == arch
                        and (c.platform or {}).get("os", "linux") == "linux"]
            if not children:
                raise InputError(f"{ref} has no image for linux/{arch}",
                                 hint="mirror or build that architecture, or build another one")
            digest = children[0].digest
        self._digests[cache_key] = digest
        return digest

    @staticmethod
    def exists(client: RegistryClient, repository: str, reference: str, ref: str) -> bool:
        if client.head_manifest(repository, reference) is None:
            raise InputError(f"FROM image {ref} does not exist",
                             hint="build or mirror it first, or fix the FROM line / "
                                  "BASE_IMAGE_TAG")
        return True

    def find(self, ref: str) -> str | None:
        """The digest of ``ref`` when the registry has it (one HEAD request), else None."""
        parsed = parse_reference(ref)
        info = self.client(parsed.host).head_manifest(parsed.repository, parsed.reference)
        return info.digest if info is not None else None

    def copy(self, source: str, tag: str) -> str:
        """Write ``tag`` in ``source``'s repository as a byte-for-byte copy of its manifest."""
        parsed = parse_reference(source)
        client = self.client(parsed.host)
        manifest = client.get_manifest(parsed.repository, parsed.reference)
        return client.put_manifest(parsed.repository, tag, manifest)


# -- one image ------------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildResult:
    """What one image build (or reuse) produced."""

    image: str
    arch: str | None
    ref: str
    containerfile: Path
    digest: str | None = None
    pushed: bool = False
    dependency: bool = False
    commands: tuple[tuple[str, ...], ...] = field(default_factory=tuple)
    key: str | None = None
    reused: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"image": self.image, "arch": self.arch, "ref": self.ref,
                "digest": self.digest, "pushed": self.pushed, "dependency": self.dependency,
                "containerfile": str(self.containerfile), "key": self.key,
                "reused": self.reused}


def keyed_step(settings: Settings, plan: Plan, step: Step, registries: Registries,
               built: Mapping[str, str]) -> Step:
    """``step`` with its input key and pinned Containerfile: every FROM image resolved to the
    digest of its platform's manifest (``built``: digests of our images this run made)."""
    arch = step.arch or host_arch()
    pins: dict[str, str] = {}
    from_digests: list[tuple[str, str]] = []
    for line in step.froms:
        if not line.is_image or line.image in pins:
            if line.is_image:
                from_digests.append((line.image, pins[line.image].rsplit("@", 1)[1]))
            continue
        name = image_name_in(line.image, plan.target.registry)
        if name is not None and name in built:
            digest = built[name]
        else:
            try:
                digest = registries.platform_digest(line.image, arch)
            except InputError as exc:
                where = containerfile_path(settings, step.image, step.arch)
                raise InputError(f"{where}:{line.line}: {step.image}: {exc.message}",
                                 hint=f"nothing was built; {exc.hint}") from None
        pins[line.image] = f"{strip_reference(line.image)}@{digest}"
        from_digests.append((line.image, digest))
    context = settings.context_dir or settings.project_dir
    entries = context_entries(context, copy_sources(step.text, step.build_args),
                              IgnoreRules.read(context))
    key = input_key(containerfile=step.text, build_args=step.build_args, arch=arch,
                    image_format=settings.image_format, from_digests=from_digests,
                    context=entries)
    return replace(step, key=key, pinned_text=pin_from_lines(step.text, step.froms, pins))


def pinned_upstream(settings: Settings, plan: Plan, step: Step, registries: Registries
                    ) -> Step:
    """Without a push (no key, no reuse) the FROM images that are not ours are still pinned
    to their platform's digest where the registry answers, so parallel builds of two
    architectures never pull the same name; ours stay local names (they are in local storage
    only)."""
    arch = step.arch or host_arch()
    pins: dict[str, str] = {}
    for line in step.froms:
        if not line.is_image or line.image in pins or image_name_in(
                line.image, plan.target.registry) in plan.graph:
            continue
        try:
            pins[line.image] = (f"{strip_reference(line.image)}@"
                                f"{registries.platform_digest(line.image, arch)}")
        except (InputError, RegistryError):
            continue  # buildah pulls it by name (or says what is wrong with it)
    return replace(step, pinned_text=pin_from_lines(step.text, step.froms, pins))


def key_ref(target: Target, step: Step) -> str:
    assert step.key is not None
    return f"{target.registry.rstrip('/')}/{step.image}:{key_tag(step.key)}"


def refuse_credentials(settings: Settings, steps: Sequence[Step],
                       labels: Mapping[str, str]) -> None:
    """Before anything is built (dry run included): no credential-looking build arg, label, or
    ENV/LABEL/ARG value or token in any Containerfile (:mod:`kiln.credentials`; exit code 2).

    Outside a dry run the Containerfiles are written first, so the file:line in the message
    can be opened (``invoke preprocess`` prints the same text)."""
    for step in steps:
        refuse_image_credentials(settings, step.image, step.arch, step.text, step.build_args,
                                 labels)


def refuse_image_credentials(settings: Settings, image: str, arch: str | None, text: str,
                             build_args: Mapping[str, str], labels: Mapping[str, str]) -> None:
    """:func:`refuse_credentials` for one image, as soon as its build file is read."""
    containerfile = containerfile_path(settings, image, arch)
    if not settings.dry_run:
        ensure_state_dir(settings.state_dir)
        containerfile.parent.mkdir(parents=True, exist_ok=True)
        containerfile.write_text(text, encoding="utf-8")
    credentials.check_build_inputs(image, text, str(containerfile), build_args, labels=labels,
                                   allow=settings.secret_allow, build_file=f"builds/{image}.in",
                                   sources=build_sources(settings, image))


def build_sources(settings: Settings, image: str) -> dict[str, str]:
    """The build file and the repository's includes, name -> text: where a credential refusal
    points (:func:`kiln.credentials.source_line`; the Containerfile has no line origins)."""
    files = [settings.builds_dir / f"{image}.in"]
    if settings.includes_dir.is_dir():
        files += sorted(p for p in settings.includes_dir.rglob("*") if p.is_file())
    sources: dict[str, str] = {}
    for path in files:
        try:
            name = str(path.relative_to(settings.project_dir))
        except ValueError:
            name = str(path)
        try:
            sources[name] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
    return sources


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
        pushed = seed.seed_upstream(settings, target.registry, names=seedable,
                                    arches=[step.arch] if step.arch else None)
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


def build(settings: Settings, image: str | Sequence[str], arch: str | None = None, *,
          rebuild: bool = False, jobs: int = 1) -> list[BuildResult]:
    """Build ``image`` (one name or several; with ``deps`` also the images of ours they are
    built FROM), natively or for ``arch``: dependencies first, ``jobs`` independent images at
    a time; each reused by its input key when the target has it (unless ``rebuild``).

    In a dry run, prints the plan (paths, exact commands) on stdout and changes nothing.
    """
    roots = [image] if isinstance(image, str) else list(image)
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
    for name in dict.fromkeys(roots):  # bad input first: before git or a registry is asked
        build_file_for(settings, name)
    access.configured_registry(settings)
    source, revision, created, epoch = _source_facts(settings, None)
    labels = oci_labels(source, revision, created)

    def refuse(src: Source) -> None:
        refuse_image_credentials(settings, src.image, arch, src.text, src.build_args, labels)

    plan = plan_graph(settings, roots, arch, inspect=refuse)
    steps = plan.steps(settings.pipeline_id)
    if plan.target.push and not plan.target.local:
        for step in steps:  # a private image is never pushed to a public registry
            promote.check_private(settings, step.image,
                                  promote.Destination.from_prefix(plan.target.registry,
                                                                  step.image))
    if settings.dry_run:
        return _print_plan(settings, buildah, plan.target, steps, labels, problems,
                           rebuild=rebuild, epoch=epoch)
    run = _Run(settings, buildah, plan, labels, epoch, rebuild)
    with registry_access(settings, plan.target) as tools, Registries(settings) as registries:
        run.tools, run.registries = tools, registries
        return run.all(steps, jobs)


@dataclass
class _Run:
    """One build run's state: what was built (digests for dependents), in graph order."""

    settings: Settings
    buildah: Buildah
    plan: Plan
    labels: Mapping[str, str]
    epoch: int | None
    rebuild: bool
    tools: ToolAccess | None = None
    registries: Registries | None = None
    digests: dict[str, str] = field(default_factory=dict)

    def all(self, steps: Sequence[Step], jobs: int) -> list[BuildResult]:
        """Every step once its dependencies are done; ``jobs`` at a time; the first failure
        stops new builds (running ones finish) and is raised."""
        by_name = {step.image: step for step in steps}
        results: dict[str, BuildResult] = {}
        pending = list(by_name)
        running: dict[Future[BuildResult], str] = {}
        failure: BaseException | None = None
        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="kiln-build") as pool:
            while pending or running:
                if failure is None:
                    for name in list(pending):
                        if len(running) >= jobs:
                            break
                        if all(dep in results for dep in self.plan.graph.nodes[name].deps):
                            pending.remove(name)
                            running[pool.submit(self.one, by_name[name])] = name
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    try:
                        results[name] = future.result()
                    except BaseException as exc:  # noqa: BLE001 - re-raised below
                        failure = failure or exc
                        pending.clear()
        if failure is not None:
            raise failure
        return [results[name] for name in self.plan.graph.order() if name in results]

    def reuse(self, step: Step, why: str) -> BuildResult:
        """``p-<id>[-<arch>]`` as a manifest copy of the image with ``step``'s input key."""
        assert self.registries is not None
        target = self.plan.target
        section = f"{step.image}{'_' + step.arch if step.arch else ''}"
        what = "dependency " if step.dependency else ""
        with console.section(f"reuse_{section}", f"reuse {what}{step.image} -> {step.ref}"):
            digest = self.registries.copy(key_ref(target, step), step.ref.rsplit(":", 1)[1])
        console.step(f"reused {step.ref}@{digest} (same input key as {key_ref(target, step)}; "
                     f"{why})")
        self.digests[step.image] = digest
        return BuildResult(step.image, step.arch, step.ref,
                           containerfile_path(self.settings, step.image, step.arch), digest,
                           True, step.dependency, (), step.key, True)

    def one(self, step: Step) -> BuildResult:
        settings, target = self.settings, self.plan.target
        assert self.tools is not None and self.registries is not None
        section = f"{step.image}{'_' + step.arch if step.arch else ''}"
        what = "dependency " if step.dependency else ""
        _seed(settings, target, step, dry_run=False)
        if not target.push:
            step = pinned_upstream(settings, self.plan, step, self.registries)
        if target.push:
            step = keyed_step(settings, self.plan, step, self.registries, self.digests)
            console.info(f"{step.image}: input key {step.key}")
            if not self.rebuild and self.registries.find(key_ref(target, step)) is not None:
                return self.reuse(step, "nothing built")
        with console.section(f"build_{section}", f"build {what}{step.image} -> {step.ref}"):
            argv, containerfile = _build_step(settings, self.buildah, target, step, self.labels,
                                              self.tools.authfile, self.tools.cert_dir,
                                              self.epoch)
        if (target.push and not self.rebuild
                and self.registries.find(key_ref(target, step)) is not None):
            # another job of this pipeline built the same inputs meanwhile (a matrix job that
            # needs the same base): take its image, so p-<id> has one digest
            return self.reuse(step, "built here too, not pushed")
        if not target.push:
            console.step(f"built {step.ref} (local storage only, not pushed)")
            return BuildResult(step.image, step.arch, step.ref, containerfile, None, False,
                               step.dependency, (tuple(argv),))
        with console.section(f"push_{section}", f"push {step.ref}"), \
                console.activity(f"pushing {step.ref}"), \
                tempfile.TemporaryDirectory(prefix="kiln-push-") as tmp:
            digestfile = Path(tmp) / "digest"
            push = push_command(self.buildah, settings, step, target,
                                authfile=self.tools.authfile, digestfile=digestfile,
                                cert_dir=self.tools.cert_dir)
            pushed = proc.run(push, error=BuildError, what=f"push of {step.ref}", stream=True,
                              check=False)
            if pushed.returncode != 0:
                raise _push_failure(step, pushed)
            pushed_digest = (digestfile.read_text(encoding="utf-8").strip()
                             if digestfile.exists() else self.registries.find(step.ref))
            # the key tag last: it only ever names a complete, pushed image
            self.registries.copy(step.ref, key_tag(step.key or ""))
        console.step(f"pushed {step.ref}" + (f"@{pushed_digest}" if pushed_digest else "")
                     + f" and {key_tag(step.key or '')}")
        if pushed_digest:
            self.digests[step.image] = pushed_digest
        return BuildResult(step.image, step.arch, step.ref, containerfile, pushed_digest, True,
                           step.dependency, (tuple(argv), tuple(push)), step.key, False)


def describe_graph(settings: Settings, roots: Sequence[str] | None, arch: str | None = None,
                   *, rebuild: bool = False) -> ImageGraph:
    """The graph of ``roots`` (every image when None) with input keys and reuse as the target
    registry answers them (read-only: HEAD/GET requests). An image whose dependency must be
    built has no key yet (it depends on the digest that build produces)."""
    names = list(roots) if roots else list_images(settings.builds_dir)
    if not names:
        raise InputError(f"no build files (*.in) in {settings.builds_dir}")
    settings = settings.replace(deps=True)
    plan = plan_graph(settings, names, arch, start=False)  # reading needs no registry started
    if not plan.registry_up or settings.dry_run or not plan.target.push:
        if not plan.registry_up and not settings.dry_run:
            console.warn("the embedded local registry is not running: no input keys "
                         "(invoke registry-start)")
        return plan.graph
    graph = plan.graph
    digests: dict[str, str] = {}
    with Registries(settings) as registries:
        for step in plan.steps(settings.pipeline_id):
            node = graph.nodes[step.image]
            if any(dep not in digests for dep in node.deps):
                continue
            try:
                keyed = keyed_step(settings, plan, step, registries, digests)
            except InputError as exc:  # a FROM image not there yet (e.g. not seeded)
                console.warn(f"{step.image}: no input key yet: {exc.message}")
                continue
            found = registries.find(key_ref(plan.target, keyed))
            if found is not None:
                digests[step.image] = found
            graph = graph.replace(replace(node, key=keyed.key, reusable=found is not None,
                                          changed=rebuild or found is None))
    return graph


def _build_step(settings: Settings, buildah: Buildah, target: Target, step: Step,
                labels: Mapping[str, str], authfile: Path | None,
                cert_dir: Path | None, epoch: int | None = None) -> tuple[list[str], Path]:
    """Build and check one image (inside its log section); returns (argv, Containerfile).
    The Containerfile written is the pinned one (FROM images by digest) when the key is known."""
    containerfile = containerfile_path(settings, step.image, step.arch)
    ensure_state_dir(settings.state_dir)
    containerfile.parent.mkdir(parents=True, exist_ok=True)
    if epoch is not None:  # tools in RUN steps (pip's .pyc files, useradd) fix their times
        step = replace(step, pinned_text=declare_after_from(step.build_text,
                                                            ("SOURCE_DATE_EPOCH",)))
    if settings.ca_bundle is not None:
        step = replace(step, pinned_text=ca_bundle_text(step.build_text))
    containerfile.write_text(step.build_text, encoding="utf-8")
    what = "dependency " if step.dependency else ""
    console.step(f"building {what}{step.image} -> {step.ref} (Containerfile: {containerfile})")
    argv = build_command(buildah, settings, step, target, containerfile=containerfile,
                         labels=labels, authfile=authfile, cert_dir=cert_dir, timestamp=epoch)
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
    line = locate_step(step.build_text, instruction) if instruction else None
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
                labels: Mapping[str, str], problems: Sequence[str] = (), *,
                rebuild: bool = False, epoch: int | None = None) -> list[BuildResult]:
    """The dry run: what would happen, as exact commands, on stdout (and what would fail).
    Input keys need registry answers, so the plan shows where they are looked up."""
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
        containerfile = containerfile_path(settings, step.image, step.arch)
        lines.append(f"# {step.image}" + (" (dependency)" if step.dependency else ""))
        seeds = _seed(settings, target, step, dry_run=True)
        if seeds:
            lines.append(f"seed offline upstream images into {target.registry}/mirror: "
                         + ", ".join(seeds))
        if target.push:
            key = f"{target.registry}/{step.image}:k-<input key>"
            lines.append("compute the input key (FROM digests, context files, build args); "
                         + ("--rebuild: build even when the registry has it" if rebuild else
                            f"when {key} exists: copy its manifest to {step.ref}, build nothing"))
        lines.append(f"write {containerfile} (preprocessed builds/{step.image}.in"
                     + (", FROM images pinned by digest)" if target.push else ")"))
        argv = build_command(buildah, settings, step, target, containerfile=containerfile,
                             labels=labels, authfile=authfile, cert_dir=cert_dir,
                             timestamp=epoch)
        lines.append(shlex.join(argv))
        commands = [tuple(argv)]
        if target.push:
            push = push_command(buildah, settings, step, target, authfile=authfile,
                                digestfile=Path("<digest file>"), cert_dir=cert_dir)
            lines.append(shlex.join(push))
            lines.append(f"copy the manifest of {step.ref} to "
                         f"{target.registry}/{step.image}:k-<input key>")
            commands.append(tuple(push))
        else:
            lines.append(f"(not pushed: {step.ref} stays in local storage)")
        results.append(BuildResult(step.image, step.arch, step.ref, containerfile, None, False,
                                   step.dependency, tuple(commands)))
    for line in lines:
        console.plan(line)
    return results
