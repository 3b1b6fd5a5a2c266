"""Registry-side promotion: ``manifest``, ``tag``, ``deploy-production``, ``deploy-mr``, ``stop-mr``.

Every operation here moves manifests, never layers (``docs/tags.md``,
``docs/registry-operations.md``):

* ``manifest`` reads each per-arch image ``p-<id>-<arch>`` (one manifest GET and its small config
  blob, to check the architecture) and writes one index ``p-<id>`` whose children are exactly
  those digests. The children were just read, so everything the index references exists before
  it is written.
* ``tag`` / ``deploy-*`` read ``p-<id>`` once and PUT the same bytes under each new tag: one GET,
  one PUT per tag, and one config GET per image (for an index, per child, after its manifest
  GET) to refuse an image whose config carries a credential (:mod:`kiln.image_scan`).
  A PUT of identical bytes is a no-op for the registry's
  content, so a rerun converges without a HEAD per tag.
* ``stop-mr`` removes ``mr-<iid>`` and nothing else. The distribution API deletes manifests by
  *digest*, and deleting a digest removes every tag on it (``p-``, ``g-``, ``latest`` ... share
  the digest of ``mr-<iid>``). Deleting by tag is optional in the spec and some registries treat
  it as a digest delete. So kiln first points ``mr-<iid>`` at a unique throwaway manifest (an OCI
  manifest whose config and only layer are the empty ``{}`` blob, with a unique annotation),
  then deletes *that* digest: only ``mr-<iid>`` pointed at it, so only ``mr-<iid>`` goes. The
  original manifest and its other tags are never touched; kiln lists the tags before and after
  and fails loudly if any other tag disappeared. A run interrupted between the two steps leaves
  ``mr-<iid>`` on a throwaway manifest; the rerun recognises it by its annotation and deletes it.
  Removal is verified with the tag list, not only a HEAD: a registry can delete the manifest and
  keep the tag (distribution answers such a half-done DELETE with 500), so a tag still listed
  and pointing at nothing is re-pointed at a fresh throwaway and deleted again — also when a
  later run finds it. A tag still dangling after that is exit 4 with a hint to rerun.

An image may have several destinations (``[tool.kiln.images.<name>] destinations``). The source
``p-<id>`` lives where ``build``/``manifest`` pushed it (``settings.registry``); a destination in
another repository first receives the manifest with all its blobs through ``skopeo copy --all
--preserve-digests`` (:mod:`kiln.skopeo`; digest-pinned, so the digest is the same everywhere;
credentials through :func:`kiln.registry.access.tool_access`), then the remaining
tags are manifest PUTs. A private image is never sent to a public registry: that is a
configuration error raised before anything is written.

Pure planning (:func:`plan_index`, :func:`destinations_for`) is separate from the I/O
(:class:`Registry`), which also implements ``--dry-run``: reads are performed (to plan), writes
are printed and skipped.
"""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kiln import console, image_scan, skopeo
from kiln import referrers as artifacts
from kiln.arch import normalize_arch
from kiln.ci_context import CIContext
from kiln.errors import ConfigError, InputError, RegistryError, RegistryTransientError
from kiln.registry import media
from kiln.registry.client import RegistryClient
from kiln.registry.media import Manifest, ManifestInfo
from kiln.registry.reference import (
    ImageRef,
    is_docker_hub,
    split_repository,
    validate_repository,
    validate_tag,
)
from kiln.settings import Settings
from kiln.tag_policy import arch_tag, source_tag

# -- where images live ------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """One repository an image is published to: ``host/path/<image>``."""

    host: str
    repository: str

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repository}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def from_prefix(cls, prefix: str, image: str) -> Destination:
        host, path = split_repository(prefix)
        repository = f"{path}/{image}" if path else image
        return cls(host, validate_repository(repository))


def _is_public(host: str, public: Sequence[str]) -> bool:
    # Docker Hub's names are one registry (kiln.registry.reference)
    return host in public or (is_docker_hub(host) and any(is_docker_hub(p) for p in public))


def destinations_for(settings: Settings, image: str, registry: str) -> list[Destination]:
    """Where ``image``'s promotion tags go; pure. ``registry`` is the source prefix.

    Default: the source registry only. ``destinations`` configured for the image replace it.
    A private image with a public destination is a :class:`ConfigError`.
    """
    conf = settings.image_settings(image)
    prefixes = list(conf.destinations) or [registry]
    result: list[Destination] = []
    for prefix in prefixes:
        dest = Destination.from_prefix(prefix, image)
        check_private(settings, image, dest)
        if dest not in result:
            result.append(dest)
    return result


def check_private(settings: Settings, image: str, dest: Destination) -> None:
    """A private image never goes to a registry listed in ``public_registries``."""
    if settings.image_settings(image).private and _is_public(dest.host,
                                                             settings.public_registries):
        raise ConfigError(
            f"image {image!r} is private but {dest.name} is on a public registry ({dest.host})",
            hint=f"remove that destination from [tool.kiln.images.{image}], use a private "
                 "registry, or mark the image private = false",
        )


# -- operations log and dry run ---------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One registry operation, as ``--dry-run`` prints it."""

    method: str
    repository: str
    reference: str
    note: str = ""

    def __str__(self) -> str:
        if self.reference.startswith("sha256:"):
            text = f"{self.method:<6} {self.repository}@{self.reference}"
        elif self.reference == "tags/list":
            text = f"{self.method:<6} {self.repository} tags/list"
        else:
            text = f"{self.method:<6} {self.repository}:{self.reference}"
        return f"{text}  ({self.note})" if self.note else text


@dataclass(frozen=True)
class Result:
    """What happened to one tag at one destination."""

    destination: str
    tag: str
    digest: str
    status: str  # written | removed | absent | copied | planned

    def as_dict(self) -> dict[str, str]:
        return {"destination": self.destination, "tag": self.tag, "digest": self.digest,
                "status": self.status}


class Registry:
    """A client bound to one repository, logging every operation; writes skipped in dry run."""

    def __init__(self, client: RegistryClient, repository: str, *, dry_run: bool = False,
                 log: Callable[[Op], None] | None = None) -> None:
        self.client = client
        self.repository = repository
        self.dry_run = dry_run
        self.ops: list[Op] = []
        self._log = log

    @property
    def name(self) -> str:
        return f"{self.client.host}/{self.repository}"

    def _record(self, method: str, reference: str, note: str = "") -> None:
        op = Op(method, self.name, reference, note)
        self.ops.append(op)
        if self._log is not None:
            self._log(op)

    def head(self, ref: str) -> ManifestInfo | None:
        self._record("HEAD", ref, "manifest")
        return self.client.head_manifest(self.repository, ref)

    def get(self, ref: str) -> Manifest:
        self._record("GET", ref, "manifest")
        return self.client.get_manifest(self.repository, ref)

    def get_config(self, digest: str) -> dict[str, Any]:
        self._record("GET", digest, "config blob")
        body = self.client.get_blob(self.repository, digest)
        return media.parse_json(body, f"{self.name}@{digest} config")

    def tags(self) -> list[str]:
        self._record("GET", "tags/list", "tags")
        return self.client.list_tags(self.repository)

    def put(self, ref: str, manifest: Manifest) -> str:
        self._record("PUT", ref, f"manifest {manifest.digest}" + (" (dry run)" if self.dry_run
                                                                   else ""))
        if self.dry_run:
            return manifest.digest
        return self.client.put_manifest(self.repository, ref, manifest)

    def put_blob(self, data: bytes) -> str:
        digest = media.digest_of(data)
        self._record("PUT", digest, "blob (if missing)" + (" (dry run)" if self.dry_run else ""))
        if self.dry_run:
            return digest
        return self.client.put_blob(self.repository, data)

    def referrers(self, digest: str) -> bytes | None:
        """The referrers API's index for ``digest``; ``None`` without the API."""
        self._record("GET", digest, "referrers")
        return self.client.referrers(self.repository, digest)

    def has_blob(self, digest: str) -> bool:
        self._record("HEAD", digest, "blob")
        return self.client.blob_exists(self.repository, digest)

    def get_blob(self, digest: str) -> bytes:
        self._record("GET", digest, "blob")
        return self.client.get_blob(self.repository, digest)

    def delete(self, digest: str) -> None:
        self._record("DELETE", digest, "manifest" + (" (dry run)" if self.dry_run else ""))
        if not self.dry_run:
            self.client.delete_manifest(self.repository, digest, missing_ok=True)


# -- manifest: the multi-arch index ------------------------------------------------------------


@dataclass(frozen=True)
class Child:
    """A per-arch image as read from the registry: its manifest and its config."""

    arch: str
    tag: str
    manifest: Manifest
    config: Mapping[str, Any]


def plan_index(children: Sequence[Child], where: str) -> Manifest:
    """The index over ``children``; pure. Checks each config says the arch its tag claims.

    The index type follows the children: a Docker manifest list over v2s2 images, an OCI index
    over OCI images (mixed: OCI index). Children keep their digests: the descriptors carry the
    digest and size of the exact bytes read.
    """
    if not children:
        raise InputError("no architectures to assemble", hint="set IMAGE_ARCHES, e.g. 'amd64 arm64'")
    descriptors: list[media.Descriptor] = []
    for child in children:
        ref = f"{where}:{child.tag}"
        if child.manifest.media_type not in media.IMAGE_TYPES:
            raise InputError(
                f"{ref} is a {child.manifest.media_type}, not a single-architecture image",
                hint="manifest assembles the per-arch images pushed by build-arch",
            )
        platform = media.platform_from_config(child.config)
        try:
            actual = normalize_arch(platform["architecture"]) if platform["architecture"] else ""
        except InputError:
            actual = platform["architecture"]
        if actual != child.arch:
            raise InputError(
                f"{ref} is mislabelled: its config says architecture "
                f"{platform['architecture'] or '(none)'!r}, the tag says {child.arch!r}",
                hint=f"rebuild it with build-arch --arch {child.arch} (nothing was written)",
            )
        if not platform["os"]:
            raise InputError(f"{ref}: its config has no 'os'", hint="rebuild the image")
        descriptors.append(media.Descriptor(child.manifest.media_type, child.manifest.digest,
                                            len(child.manifest.body), platform))
    types = {c.manifest.media_type for c in children}
    index_type = media.index_type_for(types.pop() if len(types) == 1 else media.OCI_MANIFEST)
    return Manifest.from_bytes(media.build_index(index_type, descriptors), index_type)


def assemble_index(reg: Registry, ci: CIContext, arches: Sequence[str], *,
                   secret_allow: Sequence[str] | None = None) -> Result:
    """Read ``p-<id>-<arch>`` for each arch, write the index ``p-<id>`` (one PUT).

    With ``secret_allow`` (the ``manifest`` task passes the setting), the configs just read are
    also scanned for credentials (:func:`kiln.image_scan.refuse_credentials`): an image that
    carries one gets no index, nothing is written."""
    if not arches:
        raise InputError("no architectures to assemble",
                         hint="set IMAGE_ARCHES (e.g. IMAGE_ARCHES='amd64 arm64') or --arches")
    children = []
    for arch in arches:
        tag = arch_tag(ci, arch)
        try:
            manifest = reg.get(tag)
        except RegistryError as exc:
            raise InputError(
                f"{reg.name}:{tag} cannot be read: {exc.message}",
                hint=f"run build-arch --arch {arch} first (nothing was written)",
            ) from exc
        if manifest.media_type not in media.IMAGE_TYPES:
            raise InputError(f"{reg.name}:{tag} is a {manifest.media_type}, not an image",
                             hint="manifest assembles the per-arch images pushed by build-arch")
        config = reg.get_config(media.config_descriptor(manifest.body, f"{reg.name}:{tag}").digest)
        children.append(Child(arch, tag, manifest, config))
    target = source_tag(ci)
    if secret_allow is not None:
        image_scan.refuse_credentials([(c.arch, c.config) for c in children],
                                      f"{reg.name}:{target}", action="assemble",
                                      allow=secret_allow)
    index = plan_index(children, reg.name)
    reg.put(target, index)
    return Result(reg.name, target, index.digest, "planned" if reg.dry_run else "written")


# -- tag / deploy ------------------------------------------------------------------------------


def copy_tags(reg: Registry, source: str | Manifest, tags: Sequence[str]) -> list[Result]:
    """Write ``source`` (a tag of this repository, or a manifest already read) under ``tags``."""
    for tag in tags:
        validate_tag(tag)
    manifest = reg.get(source) if isinstance(source, str) else source
    status = "planned" if reg.dry_run else "written"
    return [Result(reg.name, tag, reg.put(tag, manifest), status) for tag in tags]


# Rounds of repair for a tag left listed without its manifest (see :func:`remove_tag`).
REPAIR_ROUNDS = 3


def _throwaway(reg: Registry, info: ManifestInfo, tag: str) -> Manifest | None:
    """The manifest ``tag`` points at, if it is one of stop-mr's throwaway manifests."""
    if info.media_type != media.OCI_MANIFEST or info.size >= 1024:
        return None
    leftover = reg.get(tag)
    return leftover if media.is_throwaway(leftover.body) else None


def point_away_and_delete(reg: Registry, tags: Sequence[str]) -> None:
    """Remove each of ``tags`` alone: point it at a fresh throwaway manifest of its own, then
    delete that digest (so only the tag goes, see the module docstring). The empty config blob
    is uploaded once. The one home of this technique: stop-mr and prune both use it."""
    if not tags:
        return
    reg.put_blob(media.EMPTY_JSON)
    for tag in tags:
        marker = f"{tag}:{secrets.token_hex(16)}"
        throwaway = Manifest.from_bytes(media.throwaway_manifest(marker), media.OCI_MANIFEST)
        reg.put(tag, throwaway)
        reg.delete(throwaway.digest)


def _repair_dangling(reg: Registry, tag: str) -> None:
    """``tag`` is still listed after its removal. distribution deletes a manifest before it
    untags it, and answers 500 when the untagging step trips over a tag removed at the same
    time (another stop-mr): the tag stays listed, pointing at nothing, and a HEAD says 404.
    Re-point it at a fresh throwaway and delete again, until the tag list no longer has it."""
    for attempt in range(1, REPAIR_ROUNDS + 1):
        info = reg.head(tag)
        if info is not None and _throwaway(reg, info, tag) is None:
            raise RegistryTransientError(
                f"{reg.name}: {tag} was written again (now {info.digest}) while it was being "
                "removed (a deploy of the same tag at the same time?)",
                hint=f"rerun stop-mr once nothing deploys {tag} any more",
            )
        console.warn(f"{reg.name}: {tag} is still listed but points at nothing (the registry "
                     "deleted its manifest, not the tag: a delete racing with another one); "
                     f"repairing it ({attempt}/{REPAIR_ROUNDS})")
        point_away_and_delete(reg, [tag])
        if tag not in reg.tags():
            return
    raise RegistryTransientError(
        f"{reg.name}: {tag} is still listed after its removal and {REPAIR_ROUNDS} repairs (the "
        "registry keeps deleting its manifest but not the tag)",
        hint="rerun stop-mr: it finds the tag left pointing at nothing and repairs it",
    )


def remove_tag(reg: Registry, tag: str) -> Result:
    """Remove ``tag`` alone (see the module docstring for why a throwaway manifest).

    Done means the tag list no longer has ``tag`` — a HEAD's 404 is not enough: a tag can stay
    listed after its manifest is gone (:func:`_repair_dangling`), also found on a rerun."""
    validate_tag(tag)
    current = reg.head(tag)
    if current is None:
        if tag not in reg.tags():
            return Result(reg.name, tag, "", "absent")
        if reg.dry_run:
            reg.put(tag, Manifest.from_bytes(media.throwaway_manifest(f"{tag}:repair"),
                                             media.OCI_MANIFEST))
            return Result(reg.name, tag, "", "planned")
        _repair_dangling(reg, tag)  # listed, pointing at nothing: an earlier run's leftover
        return Result(reg.name, tag, "", "removed")
    leftover = _throwaway(reg, current, tag)
    if leftover is not None:  # an interrupted stop-mr: finish it
        reg.delete(leftover.digest)
        if reg.dry_run:
            return Result(reg.name, tag, current.digest, "planned")
        if tag in reg.tags():
            _repair_dangling(reg, tag)
        return Result(reg.name, tag, current.digest, "removed")
    before = set(reg.tags())
    point_away_and_delete(reg, [tag])
    if reg.dry_run:
        return Result(reg.name, tag, current.digest, "planned")
    after = set(reg.tags())
    lost = sorted(before - after - {tag})
    if lost and reg.head(current.digest) is not None:
        # The image mr-<iid> pointed at is still there, so its sibling tags are too: the tags
        # that went missing were removed by someone else meanwhile (another stop-mr running at
        # the same time), not by deleting our throwaway manifest.
        console.warn(f"{reg.name}: {', '.join(lost)} disappeared while {tag} was being removed "
                     f"(removed concurrently by another job?); {current.digest} is untouched")
        lost = []
    if lost:
        raise RegistryError(
            f"{reg.name}: removing {tag} also removed {', '.join(lost)}",
            hint="the registry deletes tags in an unexpected way; restore them with "
                 "'invoke tag' from the p-<pipeline> image",
        )
    if tag in after:
        _repair_dangling(reg, tag)
    return Result(reg.name, tag, current.digest, "removed")


# -- several destinations ----------------------------------------------------------------------


def copy_refs(source: Destination, digest: str, dest: Destination,
              tag: str) -> tuple[ImageRef, ImageRef]:
    """The two references of a cross-registry copy: the source by digest, the destination tag."""
    return (ImageRef(source.host, source.repository, None, digest),
            ImageRef(dest.host, dest.repository, validate_tag(tag), None))


def copy_between(settings: Settings, source: Destination, digest: str, dest: Destination,
                 tag: str, *, dry_run: bool, log: Callable[[Op], None]) -> None:
    """Copy ``source@digest`` with all its architectures to ``dest:tag``, digests preserved."""
    src_ref, dest_ref = copy_refs(source, digest, dest, tag)
    hosts = {source.host, dest.host}
    if dry_run:
        argv = skopeo.planned_copy_argv(settings, hosts, skopeo.docker_ref(src_ref),
                                        skopeo.docker_ref(dest_ref))
        log(Op("COPY", dest.name, tag, f"dry run: {shlex.join(argv)}"))
        return
    log(Op("COPY", dest.name, tag, f"skopeo copy --all {source}@{digest}"))
    with skopeo.copier(settings, hosts) as copier:
        written = copier.copy(src_ref, dest_ref)
    if written and written != digest:
        raise RegistryError(f"{dest.name}:{tag}: the copy wrote {written}, not {digest}",
                            hint="the destination registry rewrote the manifest; kiln keeps "
                                 "digests identical across registries")


# -- signatures and attestations travel with the image (kiln.referrers) ------------------------

@dataclass
class Artifacts:
    """What refers to one digest in a repository, read and checked before anything is copied."""

    subject: str
    entries: list[artifacts.Referrer]  # the referrers API's or the fallback tag's entries
    manifests: dict[str, Manifest]  # entry digest -> the artifact manifest
    fallback: Manifest | None  # the sha256-<hex> fallback index, where there is no API
    cosign: dict[str, Manifest]  # sha256-<hex>.sig/.att/.sbom -> manifest

    def __bool__(self) -> bool:
        return bool(self.entries or self.cosign)


def find_artifacts(reg: Registry, subject: str) -> Artifacts:
    """The artifacts of ``subject`` in ``reg``: referrers API (else the tag-schema fallback)
    and cosign's tags. Each listed artifact must name ``subject`` as its subject
    (:func:`kiln.referrers.check_subject`): an :class:`InputError` otherwise, nothing copied."""
    body = reg.referrers(subject)
    fallback: Manifest | None = None
    if body is None:
        tag = artifacts.fallback_tag(subject)
        if reg.head(tag) is not None:
            fallback = reg.get(tag)
            body = fallback.body
    entries = artifacts.parse_referrers_index(body, f"{reg.name} referrers of {subject}") \
        if body is not None else []
    manifests = {}
    for entry in entries:
        manifest = reg.get(entry.digest)
        artifacts.check_subject(manifest.body, subject, f"{reg.name}@{entry.digest}")
        manifests[entry.digest] = manifest
    cosign = {}
    for tag in artifacts.cosign_tags(subject):
        if reg.head(tag) is not None:
            cosign[tag] = reg.get(tag)
    return Artifacts(subject, entries, manifests, fallback, cosign)


def copy_manifest(src: Registry, dst: Registry, manifest: Manifest, ref: str) -> None:
    """Copy ``manifest`` (its blobs, or for an index its children first) from ``src`` to
    ``dst`` as ``ref`` (a tag or its digest), bytes unchanged. For small artifacts; images
    travel through skopeo (:func:`copy_between`)."""
    where = f"{src.name}@{manifest.digest}"
    if manifest.is_index:
        for child in media.index_children(manifest.body, where):
            if dst.head(child.digest) is None:
                copy_manifest(src, dst, src.get(child.digest), child.digest)
    else:
        data = media.parse_json(manifest.body, where)
        blobs = [media.config_descriptor(manifest.body, where)] if data.get("config") else []
        blobs += media.layer_descriptors(manifest.body, where)
        for blob in blobs:
            if dst.has_blob(blob.digest):
                continue
            if dst.dry_run:
                dst._record("PUT", blob.digest, "blob (dry run)")
                continue
            dst.put_blob(src.get_blob(blob.digest))
    dst.put(ref, manifest)


def gather_artifacts(src: Registry, subject: Manifest) -> list[Artifacts]:
    """The artifacts of ``subject`` and, for an index, of its children; read and checked
    (:func:`find_artifacts`) so that a bad one stops a copy before anything is written."""
    subjects = [subject.digest]
    if subject.is_index:
        subjects += [c.digest for c in media.index_children(subject.body, src.name)]
    return [a for a in (find_artifacts(src, digest) for digest in subjects) if a]


def copy_artifacts(src: Registry, dst: Registry, subject: Manifest,
                   found: list[Artifacts] | None = None) -> list[Result]:
    """Copy the signatures and attestations of ``subject`` (and of an index's children) from
    ``src`` to ``dst``, where ``subject`` itself already is or is about to be.

    Everything is read and checked first; then artifact manifests are written by digest,
    cosign tags under their tag, and where ``dst`` has no referrers API its ``sha256-<hex>``
    fallback index is written (merged with what is there). Idempotent. ``found``: what
    :func:`gather_artifacts` read before (else it is read now)."""
    if found is None:
        found = gather_artifacts(src, subject)
    status = "planned" if dst.dry_run else "copied"
    results: list[Result] = []
    for item in found:
        for entry in item.entries:
            copy_manifest(src, dst, item.manifests[entry.digest], entry.digest)
            results.append(Result(dst.name, entry.artifact_type or "referrer", entry.digest,
                                  status))
        for tag, manifest in item.cosign.items():
            copy_manifest(src, dst, manifest, tag)
            results.append(Result(dst.name, tag, manifest.digest, status))
        if item.entries and dst.referrers(item.subject) is None:
            tag = artifacts.fallback_tag(item.subject)
            existing = dst.get(tag).body if dst.head(tag) is not None else None
            merged = artifacts.merged_fallback(
                existing, item.fallback.body if item.fallback else None, item.entries)
            if merged is not None:
                index = Manifest.from_bytes(merged, media.OCI_INDEX)
                dst.put(tag, index)
                results.append(Result(dst.name, tag, index.digest, status))
    return results


ClientFactory = Callable[[str], RegistryClient]


@contextmanager
def registry_pair(settings: Settings, source: Destination, dest: Destination, *,
                  dry_run: bool = False, log: Callable[[Op], None] | None = None,
                  client_factory: ClientFactory | None = None) -> Iterator[tuple[Registry, Registry]]:
    """Two :class:`Registry` views for copying artifacts from ``source`` to ``dest`` (mirror:
    ``found = gather_artifacts(src, src.get(digest))`` before the image copy, then
    ``copy_artifacts(src, dst, subject, found)``); the clients are closed afterwards."""
    factory = client_factory or (lambda host: RegistryClient.from_settings(host, settings))
    src_client = factory(source.host)
    dst_client = src_client if dest.host == source.host else factory(dest.host)
    try:
        yield (Registry(src_client, source.repository, dry_run=dry_run, log=log),
               Registry(dst_client, dest.repository, dry_run=dry_run, log=log))
    finally:
        src_client.close()
        if dst_client is not src_client:
            dst_client.close()


def promote(
    settings: Settings,
    image: str,
    registry: str,
    tags: Sequence[str],
    *,
    source_ref: str,
    client_factory: ClientFactory,
    log: Callable[[Op], None],
) -> list[Result]:
    """Write ``tags`` for ``registry/image:source_ref`` at every destination of the image.

    The source is read once. A destination in the source repository gets manifest PUTs; any other
    destination first gets a digest-preserving copy under the first tag (blobs and children
    arrive before the tag), then PUTs for the other tags.
    """
    source = Destination.from_prefix(registry, image)
    destinations = destinations_for(settings, image, registry)
    clients: dict[str, RegistryClient] = {}

    def client(host: str) -> RegistryClient:
        if host not in clients:
            clients[host] = client_factory(host)
        return clients[host]

    try:
        src = Registry(client(source.host), source.repository, dry_run=settings.dry_run, log=log)
        try:
            manifest = src.get(source_ref)
        except RegistryError as exc:
            raise InputError(f"{source}:{source_ref} cannot be read: {exc.message}",
                             hint="build (and for several arches, manifest) must run first; "
                                  "nothing was written") from exc
        # no tag for an image whose config carries a credential (one config GET per image)
        image_scan.refuse_credentials(
            image_scan.manifest_configs(src, manifest, f"{source}:{source_ref}"),
            f"{source}:{source_ref}", action="tag", allow=settings.secret_allow)
        results: list[Result] = []
        for dest in destinations:
            reg = Registry(client(dest.host), dest.repository, dry_run=settings.dry_run, log=log)
            remaining = list(tags)
            if dest != source and remaining and reg.head(manifest.digest) is None:
                # signatures travel with the image; read and checked before anything is copied
                found = gather_artifacts(src, manifest) if settings.copy_referrers else []
                copy_between(settings, source, manifest.digest, dest, remaining[0],
                             dry_run=settings.dry_run, log=log)
                results.extend(copy_artifacts(src, reg, manifest, found))
                results.append(Result(dest.name, remaining[0], manifest.digest,
                                      "planned" if settings.dry_run else "copied"))
                remaining = remaining[1:]
            results.extend(copy_tags(reg, manifest, remaining))
        return results
    finally:
        for c in clients.values():
            c.close()


def unpromote(
    settings: Settings,
    image: str,
    registry: str,
    tag: str,
    *,
    client_factory: ClientFactory,
    log: Callable[[Op], None],
) -> list[Result]:
    """Remove ``tag`` (alone) at every destination of the image."""
    results = []
    for dest in destinations_for(settings, image, registry):
        with client_factory(dest.host) as c:
            results.append(remove_tag(Registry(c, dest.repository, dry_run=settings.dry_run,
                                               log=log), tag))
    return results
