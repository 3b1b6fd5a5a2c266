"""Offline upstream images: put ``library/debian:bookworm`` and ``library/busybox:latest`` into a
registry as if they had been mirrored from Docker Hub, without Docker Hub.

The local default flow builds ``FROM ${UPSTREAM_REGISTRY}/library/debian:bookworm`` with
``UPSTREAM_REGISTRY=<embedded registry>/mirror``; this module fills that mirror from what a
Debian machine can make itself. Both images are manifest lists, as on Docker Hub, so
``build-arch --arch arm64`` finds its architecture under the same name; each child is also
tagged ``<tag>-<arch>``:

* ``library/debian:bookworm``: a ``debootstrap --variant=minbase`` root filesystem of Debian 12
  with python3, pip, venv, the wheel of ``wheel`` (for offline ``pip install
  --no-build-isolation``) and CA certificates, for the architectures asked for (the host's by
  default; a foreign-arch build asks for its own). The host's takes about a minute of
  debootstrap; a foreign one is debootstrap's ``--foreign`` first stage, finished by
  ``chroot <root> /debootstrap/debootstrap --second-stage`` running the foreign binaries under
  qemu (:mod:`kiln.qemu` must find the binfmt handler; about three minutes for arm64). Needs
  root and Debian's apt repository; ~200 MB uncompressed, every mtime set to
  :data:`SEED_EPOCH`, committed with buildah (Docker format, created at :data:`SEED_EPOCH`).
* ``library/busybox:latest``: ``amd64`` and ``arm64`` (plus any architecture asked for) made of
  Debian's ``busybox-static``: the host's own ``/bin/busybox`` when it is static and of the
  host's architecture, otherwise the package downloaded with ``apt-get download`` (``dpkg
  --add-architecture`` and ``apt-get update`` only when needed, the ``.deb`` cached).

A list only grows: seeding another architecture adds a child and keeps the ones the registry
has. The list is written last, with one PUT, so an interrupted run never leaves a list without
its children.

Why a cache of *images*, not of root filesystems: each image is kept as a compressed ``dir:``
image (``buildah push --format v2s2 dir:...``) under ``<cache>/`` (default
``settings.state_dir/seed``), named after its recipe. Seeding a registry is then
``skopeo copy --preserve-digests`` of those bytes (about a second instead of ~30 s of commit
and compression), and every registry seeded from one cache gets the same digests.

Idempotent: an image whose list in the registry already has every architecture asked for is
skipped after one HEAD and one GET. Concurrent seeders on one machine serialise on
``<cache>/.make.lock`` while making an image and on ``<cache>/.lock`` while writing a
registry's list (which they read again first, so no architecture another added is lost).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shlex
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kiln import console, proc, qemu, skopeo
from kiln.arch import SUPPORTED_ARCHES, host_arch, normalize_arch
from kiln.buildah import Buildah
from kiln.errors import InputError, KilnError, ToolMissingError
from kiln.registry.client import open_client
from kiln.registry.media import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    Manifest,
    digest_of,
    index_children,
    is_index,
)
from kiln.registry.reference import split_repository
from kiln.settings import Settings
from kiln.state_dir import ensure_state_dir

# Every file of a seeded root filesystem gets this mtime, and the images this created time:
# 2023-06-10 00:00 UTC, the release of Debian 12 "bookworm".
SEED_EPOCH = 1686355200

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_PACKAGES: tuple[str, ...] = (
    "python3", "python3-pip", "python3-venv", "python3-wheel-whl", "ca-certificates",
)
BUSYBOX_ARCHES: tuple[str, ...] = ("amd64", "arm64")
MIRROR_PREFIX = "mirror"
# Bump when the way images are made changes, so cached images are made again.
_RECIPE_VERSION = 1
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Debian's architecture names, where they differ from ours.
_DPKG_ARCH = {"amd64": "amd64", "arm64": "arm64", "ppc64le": "ppc64el", "s390x": "s390x"}
_DEBIAN_SOURCES = """\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


@dataclass(frozen=True)
class UpstreamImage:
    """An upstream image kiln can make offline: a manifest list of ``always_arches`` plus the
    architectures asked for (the host's when none is)."""

    name: str
    description: str
    always_arches: tuple[str, ...] = ()

    @property
    def repository(self) -> str:
        return self.name.rpartition(":")[0]

    @property
    def tag(self) -> str:
        return self.name.rpartition(":")[2]


UPSTREAM_IMAGES: dict[str, UpstreamImage] = {
    "library/debian:bookworm": UpstreamImage(
        "library/debian:bookworm",
        "Debian 12 minbase (debootstrap) with python3, pip, venv, CA certificates; the host's "
        "architecture and any foreign one asked for (debootstrap's foreign mode, under qemu)",
    ),
    "library/busybox:latest": UpstreamImage(
        "library/busybox:latest",
        "Debian's busybox-static, manifest list of " + " and ".join(BUSYBOX_ARCHES)
        + " (and any architecture asked for)",
        always_arches=BUSYBOX_ARCHES,
    ),
}


# -- pure helpers ---------------------------------------------------------------------------

def mirror_ref(registry: str, name: str) -> str:
    """``<registry>/mirror/<name>``: where an offline upstream image lives (the local flow's
    ``UPSTREAM_REGISTRY``, ``docs/registry-operations.md``)."""
    return f"{registry.rstrip('/')}/{MIRROR_PREFIX}/{name}"


def selected_images(names: Iterable[str] | None) -> list[UpstreamImage]:
    """The images to seed, in a stable order; unknown names are an :class:`InputError`."""
    if names is None:
        return list(UPSTREAM_IMAGES.values())
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in UPSTREAM_IMAGES]
    if unknown:
        raise InputError(
            f"cannot seed {', '.join(unknown)} offline",
            hint=f"offline upstream images: {', '.join(UPSTREAM_IMAGES)}; mirror others "
                 "(invoke mirror) or point KILN_UPSTREAM_REGISTRY at a registry that has them",
        )
    return [UPSTREAM_IMAGES[n] for n in wanted]


def wanted_arches(image: UpstreamImage, arches: Iterable[str] | None = None,
                  native: str | None = None) -> list[str]:
    """The architectures ``image`` must have: its ``always_arches`` plus ``arches`` (default:
    the host's), unique, in :data:`~kiln.arch.SUPPORTED_ARCHES` order. A name kiln does not
    know is an :class:`InputError`."""
    asked = [normalize_arch(a) for a in arches] if arches else [native or host_arch()]
    wanted = set(image.always_arches) | set(asked)
    return sorted(wanted, key=_arch_order)


def list_children(body: bytes) -> dict[str, tuple[str, int, str]]:
    """arch -> (digest, size, arch) of a manifest list's linux children (pure)."""
    children: dict[str, tuple[str, int, str]] = {}
    for child in index_children(body, "seeded manifest list"):
        platform = child.platform or {}
        arch = str(platform.get("architecture", ""))
        if arch and platform.get("os", "linux") == "linux":
            children[arch] = (child.digest, child.size, arch)
    return children


def ordered_children(children: Iterable[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """Children of a list in architecture order (amd64, arm64, ppc64le, s390x, then others)."""
    return sorted(children, key=lambda child: _arch_order(child[2]))


def _arch_order(arch: str) -> tuple[int, str]:
    known = SUPPORTED_ARCHES.index(arch) if arch in SUPPORTED_ARCHES else len(SUPPORTED_ARCHES)
    return known, arch


def debian_cache_name(arch: str, packages: Sequence[str] = DEBIAN_PACKAGES,
                      suite: str = DEBIAN_SUITE) -> str:
    """Name of the cached Debian image: changes whenever its recipe changes."""
    recipe = (f"v{_RECIPE_VERSION} {suite} {arch} minbase {','.join(sorted(packages))} "
              f"{SEED_EPOCH}")
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    return f"debian-{suite}-{arch}-{digest}"


def debootstrap_command(target: Path, arch: str, mirror: str = DEBIAN_MIRROR,
                        packages: Sequence[str] = DEBIAN_PACKAGES,
                        suite: str = DEBIAN_SUITE, *, foreign: bool = False) -> list[str]:
    """debootstrap of ``arch``; ``foreign`` only unpacks (first stage): the packages' scripts
    are run later, inside the root, by :func:`second_stage_command` under qemu."""
    argv = ["debootstrap", "--variant=minbase"]
    if foreign:
        argv.append("--foreign")
    return [*argv, f"--arch={_DPKG_ARCH[arch]}", f"--include={','.join(packages)}", suite,
            str(target), mirror]


def second_stage_command(root: Path) -> list[str]:
    """Finish a foreign debootstrap: its own script, chrooted into the root it made (every
    binary there is foreign, so the kernel hands it to qemu through binfmt_misc)."""
    return ["chroot", str(root), "/debootstrap/debootstrap", "--second-stage"]


def tar_command(root: Path, output: Path) -> list[str]:
    """GNU tar of ``root`` with names sorted and every mtime :data:`SEED_EPOCH`: the same
    packages give the same bytes. Never crosses into a mount (a /proc left mounted inside)."""
    return ["tar", "--sort=name", f"--mtime=@{SEED_EPOCH}", "--numeric-owner", "--format=gnu",
            "--one-file-system", "-C", str(root), "-cf", str(output), "."]


def busybox_links(list_full: str) -> list[str]:
    """Applet paths (``bin/sh``, ``usr/bin/awk`` ...) from ``busybox --list-full``; safe
    relative paths only, never ``bin/busybox`` itself."""
    links = []
    for line in list_full.splitlines():
        path = line.strip().lstrip("/")
        parts = path.split("/")
        if not path or ".." in parts or path == "bin/busybox":
            continue
        links.append(path)
    return sorted(set(links))


def busybox_rootfs_tar(busybox: bytes, links: Sequence[str]) -> bytes:
    """A deterministic tarball of a busybox root filesystem: the binary, applet symlinks, the
    usual directories, and minimal ``/etc/passwd`` and ``/etc/group`` (as Docker Hub's has)."""
    buffer = io.BytesIO()
    dirs = {"bin", "dev", "etc", "home", "proc", "root", "sbin", "sys", "tmp", "usr",
            "usr/bin", "usr/sbin", "var", "var/spool", "var/spool/mail", "var/www"}
    for link in links:
        parent = link.rpartition("/")[0]
        while parent:
            dirs.add(parent)
            parent = parent.rpartition("/")[0]
    files = {
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n"
                      b"nobody:x:65534:65534:nobody:/home:/bin/false\n",
        "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
    }
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        def add(info: tarfile.TarInfo, data: bytes | None = None) -> None:
            info.mtime, info.uid, info.gid, info.uname, info.gname = SEED_EPOCH, 0, 0, "", ""
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        for name in sorted(dirs):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            if name == "root":
                info.mode = 0o700
            add(info)
        binary = tarfile.TarInfo("bin/busybox")
        binary.size, binary.mode = len(busybox), 0o755
        add(binary, busybox)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            add(info, data)
        for link in links:
            info = tarfile.TarInfo(link)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "/bin/busybox", 0o777
            add(info)
    return buffer.getvalue()


def is_static_elf(data: bytes) -> bool:
    """Whether an ELF file has no program interpreter (PT_INTERP), i.e. is statically linked."""
    if data[:4] != b"\x7fELF":
        return False
    is64 = data[4] == 2
    order: Literal["little", "big"] = "little" if data[5] == 1 else "big"

    def num(offset: int, size: int) -> int:
        return int.from_bytes(data[offset:offset + size], order)

    if is64:
        phoff, phentsize, phnum = num(0x20, 8), num(0x36, 2), num(0x38, 2)
    else:
        phoff, phentsize, phnum = num(0x1C, 4), num(0x2A, 2), num(0x2C, 2)
    return all(num(phoff + i * phentsize, 4) != 3 for i in range(phnum))


def elf_arch(data: bytes) -> str | None:
    """Our name for an ELF file's machine (e_machine), if it is one we know."""
    if data[:4] != b"\x7fELF":
        return None
    machine = int.from_bytes(data[18:20], "little" if data[5] == 1 else "big")
    return {62: "amd64", 183: "arm64", 21: "ppc64le", 22: "s390x"}.get(machine)


# -- seeding --------------------------------------------------------------------------------

def seed_upstream(settings: Settings, registry: str, *, names: Iterable[str] | None = None,
                  cache_dir: Path | None = None,
                  arches: Iterable[str] | None = None) -> list[str]:
    """Push the offline upstream images ``names`` (default: all of :data:`UPSTREAM_IMAGES`) to
    ``<registry>/mirror/...`` with the architectures ``arches`` (default: the host's; see
    :func:`wanted_arches`), unless the registry's list has them already; returns the references
    pushed (per-arch tags, then the list). Images are made once and cached in ``cache_dir``
    (default ``settings.state_dir / "seed"``); later seeds of any registry copy the cached
    bytes, so every registry gets the same digests."""
    images = selected_images(names)
    asked = list(arches) if arches is not None else None
    plans = [(image, wanted_arches(image, asked)) for image in images]
    cache = cache_dir or ensure_state_dir(settings.state_dir) / "seed"
    cache.mkdir(parents=True, exist_ok=True)
    ctx = _Context(settings, registry, cache)
    pushed: list[str] = []
    for image, wanted in plans:
        ref = mirror_ref(registry, image.name)
        with _lock(cache / ".lock"):
            children = _registry_children(ctx, image.repository, image.tag)
        missing = [arch for arch in wanted if arch not in children]
        if not missing:
            console.info(f"{ref}: already in the registry ({', '.join(wanted)}), not seeded again")
            continue
        started = time.monotonic()
        console.step(f"seeding {ref} for {', '.join(missing)}"
                     + (f" (the registry has {', '.join(children)})" if children else ""))
        layouts = {arch: _layout(ctx, image, arch) for arch in missing}
        with _lock(cache / ".lock"):
            # Read again: another seeder may have added architectures meanwhile; keep them.
            children = _registry_children(ctx, image.repository, image.tag)
            added = [arch for arch in missing if arch not in children]
            for arch in added:
                arch_ref = f"{ref}-{arch}"
                digest, size = _copy_to_registry(ctx, layouts[arch], arch_ref)
                children[arch] = (digest, size, arch)
                pushed.append(arch_ref)
            if added:
                _put_list(ctx, image.repository, image.tag,
                          manifest_list(ordered_children(children.values())))
                pushed.append(ref)
        console.info(f"{ref} ready after {time.monotonic() - started:.0f}s")
    return pushed


def _layout(ctx: _Context, image: UpstreamImage, arch: str) -> Path:
    """The cached image of ``image`` for ``arch``, made when missing. Making serialises on
    ``<cache>/.make.lock`` (minutes for a foreign Debian), while seeding from images already
    cached only takes ``<cache>/.lock`` for the registry's read-copy-write (seconds)."""
    if image.repository == "library/debian":
        layout = ctx.cache / debian_cache_name(arch)
        if _cached(layout):
            console.info(f"using the cached Debian image {layout}")
            return layout
    with _lock(ctx.cache / ".make.lock"):
        if image.repository == "library/debian":
            return _debian_layout(ctx, arch)
        return _busybox_layout(ctx, arch)


def manifest_list(children: Sequence[tuple[str, int, str]]) -> bytes:
    """A Docker v2s2 manifest list of (digest, size, arch) children, as exact bytes."""
    manifests = []
    for digest, size, arch in children:
        platform = {"architecture": arch, "os": "linux"}
        if arch == "arm64":
            platform["variant"] = "v8"
        manifests.append({"mediaType": DOCKER_MANIFEST, "size": size, "digest": digest,
                          "platform": platform})
    document = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": manifests}
    return json.dumps(document, indent=3).encode()


@dataclass(frozen=True)
class _Context:
    settings: Settings
    registry: str
    cache: Path

    @property
    def buildah(self) -> Buildah:
        return Buildah.from_settings(self.settings)

    def repository(self, repository: str) -> tuple[str, str]:
        """(registry host, full repository path) of ``mirror/<repository>``."""
        host, prefix = split_repository(self.registry)
        return host, "/".join(p for p in (prefix, MIRROR_PREFIX, repository) if p)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _registry_children(ctx: _Context, repository: str, tag: str) -> dict[str, tuple[str, int, str]]:
    """The architectures the registry's list ``mirror/<repository>:<tag>`` has (HEAD, then GET
    of a list). Absent, or a single image (an older seed): none, so the list is (re)written."""
    host, path = ctx.repository(repository)
    with open_client(host, ctx.settings) as client:
        info = client.head_manifest(path, tag)
        if info is None or not is_index(info.media_type):
            return {}
        return list_children(client.get_manifest(path, tag).body)


def _make_image(ctx: _Context, tar: Path, layout: Path, *, arch: str, cmd: str) -> None:
    """``buildah from scratch`` + ``add`` the root filesystem + ``config`` + ``commit`` (Docker
    format, created at :data:`SEED_EPOCH`), then ``push`` (v2s2, compressed) into the cache as a
    ``dir:`` image at ``layout``; the local image is removed again."""
    buildah = ctx.buildah
    local = f"localhost/kiln-seed/{layout.name}"
    partial = layout.with_name(layout.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    _remove_image(buildah, local)
    container = buildah.run("from", "--quiet", "scratch", what="buildah from scratch").stdout.strip()
    try:
        buildah.run("add", container, str(tar), "/", what=f"buildah add {tar.name}")
        config = ["config", "--arch", arch, "--os", "linux", "--env", f"PATH={_PATH}",
                  "--cmd", cmd]
        if arch == "arm64":
            config += ["--variant", "v8"]
        buildah.run(*config, container, what="buildah config")
        buildah.run("commit", "--quiet", "--format", "docker", "--timestamp", str(SEED_EPOCH),
                    container, local, what=f"buildah commit {local}")
        buildah.run("push", "--quiet", "--format", "v2s2", local, f"dir:{partial}",
                    what=f"buildah push {local} to the cache")
        partial.replace(layout)
    finally:
        buildah.run("rm", container, what="buildah rm", check=False)
        _remove_image(buildah, local)
        shutil.rmtree(partial, ignore_errors=True)


def _remove_image(buildah: Buildah, name: str) -> None:
    buildah.run("rmi", "--force", name, what="buildah rmi", check=False)


def _cached(layout: Path) -> bool:
    return (layout / "manifest.json").is_file()


def _copy_to_registry(ctx: _Context, layout: Path, ref: str) -> tuple[str, int]:
    """``skopeo copy --preserve-digests dir:<layout> docker://<ref>`` (:mod:`kiln.skopeo`): the
    cached bytes as they are. Returns the manifest's (digest, size)."""
    host = split_repository(ctx.registry)[0]
    with skopeo.copier(ctx.settings, {host}) as copier:
        copier.copy_to(f"dir:{layout}", f"docker://{ref}", f"push of {ref}")
    body = (layout / "manifest.json").read_bytes()
    return digest_of(body), len(body)


# -- debian ---------------------------------------------------------------------------------

def _debian_layout(ctx: _Context, arch: str) -> Path:
    layout = ctx.cache / debian_cache_name(arch)
    if _cached(layout):
        console.info(f"using the cached Debian image {layout}")
    else:
        _make_debian_image(ctx, layout, arch)
    return layout


def _make_debian_image(ctx: _Context, layout: Path, arch: str) -> None:
    foreign = arch != host_arch()
    if os.geteuid() != 0:
        raise ToolMissingError(
            f"making the offline Debian base image ({arch}) needs root (debootstrap)",
            hint=f"run as root once (the result is cached in {ctx.cache}), or mirror "
                 "library/debian:bookworm into the registry yourself",
        )
    proc.which("debootstrap")
    if foreign:
        _check_foreign(arch)
    mirror = ctx.settings.seed_debian_mirror
    # Outside the cache (and so outside a project's .kiln): debootstrap mounts /proc and /sys
    # inside the root it makes, and tools walking the project must not meet them.
    work = Path(tempfile.mkdtemp(prefix="kiln-debootstrap-", dir=_scratch_dir()))
    root = work / "root"
    console.step(f"creating a Debian {DEBIAN_SUITE} root filesystem for {arch} with debootstrap "
                 + ("(first stage here, second stage under qemu: about three minutes"
                    if foreign else "(about a minute")
                 + f", ~300 MB, from {mirror})")
    started = time.monotonic()
    try:
        try:
            proc.run(debootstrap_command(root, arch, mirror, foreign=foreign), error=KilnError,
                     what="debootstrap" + (" --foreign" if foreign else ""), tail_lines=25)
        except KilnError as exc:
            raise KilnError(exc.message, hint=f"debootstrap needs Debian's apt repository "
                            f"({mirror}); set KILN_SEED_DEBIAN_MIRROR for another mirror") from exc
        if foreign:
            _second_stage(root, arch)
            _unmount_under(work)  # the second stage leaves the root's /proc and /sys mounted
        _tidy_debian_rootfs(root)
        tar = work / "rootfs.tar"
        proc.run(tar_command(root, tar), error=KilnError, what="tar of the root filesystem")
        _unmount_under(work)
        shutil.rmtree(root)
        console.info(f"root filesystem: {tar.stat().st_size / 1e6:.0f} MB uncompressed, "
                     f"{time.monotonic() - started:.0f}s")
        _make_image(ctx, tar, layout, arch=arch, cmd='["bash"]')
    finally:
        _unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
    console.info(f"cached {layout} in {time.monotonic() - started:.0f}s")


def _scratch_dir() -> str:
    """Where a root filesystem is made: ``$TMPDIR``, else /var/tmp (large files, on disk)."""
    return os.environ.get("TMPDIR") or ("/var/tmp" if os.path.isdir("/var/tmp") else
                                        tempfile.gettempdir())


def _check_foreign(arch: str) -> None:
    """A foreign root filesystem is finished by running its own binaries: qemu must be ready
    (the same check a foreign-arch build makes), and chroot must exist."""
    try:
        qemu.check_binfmt(arch)
    except ToolMissingError as exc:
        raise ToolMissingError(
            f"cannot make the offline Debian base image for {arch}: {exc.message}",
            hint=f"{exc.hint}; or mirror library/debian:bookworm (with {arch}) into the "
                 "registry yourself (KILN_UPSTREAM_REGISTRY)",
        ) from exc
    proc.which("chroot")


def _second_stage(root: Path, arch: str) -> None:
    console.step(f"debootstrap second stage for {arch} under qemu "
                 f"({qemu.handler_name(arch)}: every package script runs emulated)")
    try:
        proc.run(second_stage_command(root), error=KilnError,
                 what=f"debootstrap --second-stage ({arch}, under qemu)", tail_lines=25)
    except KilnError as exc:
        log = root / "debootstrap" / "debootstrap.log"
        detail = ""
        if log.is_file():
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            detail = "\n  debootstrap.log (last lines):\n" + "\n".join("    " + x for x in lines)
        raise KilnError(
            exc.message + detail,
            hint=f"qemu could not run Debian's {arch} package scripts here; check "
                 f"`invoke binfmt-register --arch {arch}`, or mirror library/debian:bookworm "
                 f"with {arch} from Docker Hub (invoke mirror) instead of seeding it",
        ) from exc


def _tidy_debian_rootfs(root: Path) -> None:
    """What debootstrap leaves that an image should not have: the host's resolv.conf and
    hostname, device nodes, downloaded packages, logs with timestamps."""
    for name in ("etc/resolv.conf", "etc/hostname", "etc/apt/sources.list"):
        (root / name).unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(_DEBIAN_SOURCES)
    for folder in ("dev", "var/cache/apt/archives", "var/lib/apt/lists", "var/log", "tmp"):
        base = root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_symlink() or not path.is_dir():
                path.unlink()
            elif folder in {"dev", "tmp"}:
                path.rmdir()
    for name in ("var/cache/ldconfig/aux-cache", "var/cache/debconf/config.dat-old",
                 "var/cache/debconf/templates.dat-old", "var/lib/dpkg/status-old",
                 "var/lib/dpkg/diversions-old", "etc/machine-id"):
        (root / name).unlink(missing_ok=True)


def _unmount_under(path: Path) -> None:
    """Unmount what a failed debootstrap left mounted inside ``path`` (proc, sys), deepest
    first, so removing the folder cannot reach the host's /proc or /sys."""
    prefix = str(path.resolve()) + "/"
    try:
        with open("/proc/self/mounts", encoding="utf-8") as handle:
            points = [line.split()[1] for line in handle]
    except OSError:
        return
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        proc.run(["umount", "-l", point], what=f"umount {point}", check=False)


# -- busybox --------------------------------------------------------------------------------

def _busybox_layout(ctx: _Context, arch: str) -> Path:
    """The cached busybox image of ``arch`` (made when missing); its applet links are the ones
    the host's busybox lists."""
    runnable = _busybox_binary(ctx, host_arch())
    links = busybox_links(_list_applets(runnable))
    binary = runnable if arch == host_arch() else _busybox_binary(ctx, arch)
    data = busybox_rootfs_tar(binary.read_bytes(), links)
    layout = ctx.cache / f"busybox-{arch}-{hashlib.sha256(data).hexdigest()[:12]}"
    if not _cached(layout):
        with tempfile.TemporaryDirectory(prefix="busybox-", dir=ctx.cache) as tmp:
            tar = Path(tmp) / "rootfs.tar"
            tar.write_bytes(data)
            _make_image(ctx, tar, layout, arch=arch, cmd='["sh"]')
    return layout


def _put_list(ctx: _Context, repository: str, tag: str, body: bytes) -> None:
    """The manifest list, written last (its children exist by then): one PUT."""
    host, path = ctx.repository(repository)
    with open_client(host, ctx.settings) as client:
        client.put_manifest(path, tag, Manifest.from_bytes(body, DOCKER_MANIFEST_LIST))


def _list_applets(binary: Path) -> str:
    return proc.run([str(binary), "--list-full"], what=f"{binary} --list-full").stdout


def _busybox_binary(ctx: _Context, arch: str) -> Path:
    """A static busybox for ``arch``: the host's own when it fits, else Debian's package."""
    if arch == host_arch():
        for candidate in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
            if candidate.is_file():
                data = candidate.read_bytes()
                if is_static_elf(data) and elf_arch(data) == arch:
                    return candidate
    binary = ctx.cache / f"busybox-static-{arch}" / "bin" / "busybox"
    if not binary.is_file():
        deb = _download_deb(ctx.cache, "busybox-static", arch)
        folder = binary.parent.parent
        shutil.rmtree(folder, ignore_errors=True)
        proc.run(["dpkg-deb", "-x", str(deb), str(folder)], error=KilnError,
                 what=f"dpkg-deb -x {deb.name}")
        if not binary.is_file():
            raise KilnError(f"{deb} has no bin/busybox")
    data = binary.read_bytes()
    if elf_arch(data) != arch:
        raise KilnError(f"{binary} is for {elf_arch(data)}, not {arch}")
    return binary


def _download_deb(cache: Path, package: str, arch: str) -> Path:
    """``apt-get download <package>:<arch>`` into ``cache`` (cached), adding the architecture
    to dpkg and refreshing apt's lists only when needed."""
    dpkg_arch = _DPKG_ARCH[normalize_arch(arch)]
    existing = sorted(cache.glob(f"{package}_*_{dpkg_arch}.deb"))
    if existing:
        return existing[-1]
    proc.which("apt-get")
    native = proc.run(["dpkg", "--print-architecture"], what="dpkg").stdout.strip()
    if dpkg_arch != native:
        foreign = proc.run(["dpkg", "--print-foreign-architectures"], what="dpkg").stdout.split()
        if dpkg_arch not in foreign:
            _need_root(f"dpkg --add-architecture {dpkg_arch}")
            console.step(f"dpkg --add-architecture {dpkg_arch} && apt-get update")
            proc.run(["dpkg", "--add-architecture", dpkg_arch], what="dpkg --add-architecture")
            _apt_update()
    download = ["sh", "-c",
                f"cd {shlex.quote(str(cache))} && exec apt-get download -q "
                f"{shlex.quote(f'{package}:{dpkg_arch}')}"]
    result = proc.run(download, what=f"apt-get download {package}:{dpkg_arch}", check=False)
    if result.returncode != 0:
        console.info(f"apt-get download failed ({result.stderr.strip()[-200:]}); "
                     "refreshing apt's lists and trying again")
        _apt_update()
        proc.run(download, error=KilnError, what=f"apt-get download {package}:{dpkg_arch}")
    found = sorted(cache.glob(f"{package}_*_{dpkg_arch}.deb"))
    if not found:
        raise KilnError(f"apt-get download {package}:{dpkg_arch} left no .deb in {cache}")
    return found[-1]


def _apt_update() -> None:
    _need_root("apt-get update")
    try:
        proc.run(["apt-get", "update", "-q"], error=KilnError, what="apt-get update",
                 tail_lines=15)
    except KilnError as exc:
        raise KilnError(exc.message, hint="busybox for another architecture comes from Debian's "
                        "apt repository; a mirror in sync ('File has unexpected size') or an "
                        "unreachable one fails this: run the build again later") from exc


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ToolMissingError(f"seeding busybox needs `{what}`, which needs root",
                               hint=f"run `{what}` as root once, then seed again")
