"""kiln.seed: offline upstream images. Unit tests of the pure parts (no subprocess), and real
seeding of the busybox manifest list (amd64 + arm64 from Debian's busybox-static) into a real
registry, checked with skopeo and the registry's access log. The Debian image is seeded and used
by tests/test_images_real.py (it shares the expensive debootstrap cache)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO_ROOT, require_tool, skip_or_fail
from kiln import seed
from kiln.errors import InputError, ToolMissingError
from kiln.local_registry import RegistryServer
from kiln.settings import Settings

# Where tests keep seed caches between runs (the local flow's own cache by default: .kiln/ is
# git-ignored). CI starts clean, so its first seed pays for debootstrap once.
SEED_CACHE = Path(os.environ.get("KILN_TEST_SEED_CACHE", str(REPO_ROOT / ".kiln" / "seed")))


# -- pure helpers -------------------------------------------------------------------------------

def test_known_images_and_references(no_subprocess: None) -> None:
    assert set(seed.UPSTREAM_IMAGES) == {"library/debian:bookworm", "library/busybox:latest"}
    assert seed.mirror_ref("127.0.0.1:5000/", "library/debian:bookworm") == \
        "127.0.0.1:5000/mirror/library/debian:bookworm"
    assert [i.name for i in seed.selected_images(None)] == list(seed.UPSTREAM_IMAGES)
    picked = seed.selected_images(["library/busybox:latest", "library/busybox:latest"])
    assert [(i.repository, i.tag, i.always_arches) for i in picked] == [
        ("library/busybox", "latest", ("amd64", "arm64"))]


def test_wanted_arches_the_hosts_by_default_plus_what_is_asked(no_subprocess: None) -> None:
    debian = seed.UPSTREAM_IMAGES["library/debian:bookworm"]
    busybox = seed.UPSTREAM_IMAGES["library/busybox:latest"]
    assert seed.wanted_arches(debian, None, native="amd64") == ["amd64"]
    assert seed.wanted_arches(debian, ["aarch64"], native="amd64") == ["arm64"]
    assert seed.wanted_arches(debian, ["s390x", "amd64", "arm64"]) == ["amd64", "arm64", "s390x"]
    assert seed.wanted_arches(busybox, None, native="amd64") == ["amd64", "arm64"]
    assert seed.wanted_arches(busybox, ["ppc64el"]) == ["amd64", "arm64", "ppc64le"]
    with pytest.raises(InputError, match="unsupported architecture 'mips'"):
        seed.wanted_arches(debian, ["mips"])


def test_a_list_grows_and_keeps_its_children_in_arch_order(no_subprocess: None) -> None:
    """Seeding arm64 into a registry whose list has amd64 keeps amd64 (pure parts)."""
    amd = ("sha256:" + "a" * 64, 428, "amd64")
    arm = ("sha256:" + "b" * 64, 430, "arm64")
    body = seed.manifest_list([amd])
    children = seed.list_children(body)
    assert children == {"amd64": amd}
    children["arm64"] = arm
    grown = seed.manifest_list(seed.ordered_children(reversed(list(children.values()))))
    assert [m["platform"]["architecture"] for m in json.loads(grown)["manifests"]] == [
        "amd64", "arm64"]
    assert seed.ordered_children([("d", 1, "riscv64"), ("c", 1, "s390x"), ("b", 1, "amd64")]) \
        == [("b", 1, "amd64"), ("c", 1, "s390x"), ("d", 1, "riscv64")]


def test_unknown_image_is_an_input_error_that_lists_the_known_ones(no_subprocess: None) -> None:
    with pytest.raises(InputError, match="cannot seed library/postgres:16 offline") as err:
        seed.selected_images(["library/debian:bookworm", "library/postgres:16"])
    assert err.value.hint is not None
    assert "library/debian:bookworm" in err.value.hint and "invoke mirror" in err.value.hint


def test_debian_recipe(no_subprocess: None) -> None:
    argv = seed.debootstrap_command(Path("/x/root"), "arm64", "http://mirror.example/debian")
    assert argv == ["debootstrap", "--variant=minbase", "--arch=arm64",
                    "--include=python3,python3-pip,python3-venv,python3-wheel-whl,ca-certificates",
                    "bookworm", "/x/root", "http://mirror.example/debian"]
    assert seed.debootstrap_command(Path("r"), "ppc64le")[2] == "--arch=ppc64el"
    # A foreign architecture: debootstrap only unpacks, its own script finishes inside the root
    # (chroot), where every binary runs under qemu.
    foreign = seed.debootstrap_command(Path("/x/root"), "arm64", foreign=True)
    assert foreign[:4] == ["debootstrap", "--variant=minbase", "--foreign", "--arch=arm64"]
    assert seed.second_stage_command(Path("/x/root")) == [
        "chroot", "/x/root", "/debootstrap/debootstrap", "--second-stage"]
    name = seed.debian_cache_name("amd64")
    assert name.startswith("debian-bookworm-amd64-")
    # The cache name follows the recipe: another package list is another cached image.
    assert seed.debian_cache_name("amd64", ("python3",)) != name
    assert seed.debian_cache_name("arm64") != name
    tar = seed.tar_command(Path("/r"), Path("/o.tar"))
    assert "--sort=name" in tar and f"--mtime=@{seed.SEED_EPOCH}" in tar and tar[-1] == "."


def test_busybox_links_are_safe_relative_applet_paths(no_subprocess: None) -> None:
    listing = "bin/sh\nusr/bin/awk\n/sbin/ifconfig\nbin/busybox\n../etc/passwd\n\nbin/sh\n"
    assert seed.busybox_links(listing) == ["bin/sh", "sbin/ifconfig", "usr/bin/awk"]


def test_busybox_rootfs_tar_is_deterministic_and_complete(no_subprocess: None) -> None:
    binary = b"\x7fELF fake busybox"
    first = seed.busybox_rootfs_tar(binary, ["bin/sh", "usr/sbin/chroot"])
    assert first == seed.busybox_rootfs_tar(binary, ["bin/sh", "usr/sbin/chroot"])
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("bin/busybox").read() == binary  # type: ignore[union-attr]
        assert members["bin/sh"].issym() and members["bin/sh"].linkname == "/bin/busybox"
        assert members["usr/sbin/chroot"].linkname == "/bin/busybox"
        assert members["tmp"].mode == 0o1777 and members["root"].mode == 0o700
        assert b"root:x:0:0:root:/root:/bin/sh" in tar.extractfile("etc/passwd").read()  # type: ignore[union-attr]
        assert {m.mtime for m in members.values()} == {seed.SEED_EPOCH}
        assert {(m.uid, m.gid) for m in members.values()} == {(0, 0)}
        assert {"usr", "usr/sbin", "etc", "proc", "sys", "dev"} <= set(members)


def _elf(machine: int, *, interp: bool, is64: bool = True) -> bytes:
    """A minimal ELF header with one program header (PT_INTERP or PT_LOAD)."""
    header = bytearray(64 if is64 else 52)
    header[:4] = b"\x7fELF"
    header[4], header[5] = (2 if is64 else 1), 1
    header[18:20] = machine.to_bytes(2, "little")
    phoff = len(header)
    if is64:
        header[0x20:0x28] = phoff.to_bytes(8, "little")
        header[0x36:0x38], header[0x38:0x3A] = (56).to_bytes(2, "little"), (1).to_bytes(2, "little")
        entry = bytearray(56)
    else:
        header[0x1C:0x20] = phoff.to_bytes(4, "little")
        header[0x2A:0x2C], header[0x2C:0x2E] = (32).to_bytes(2, "little"), (1).to_bytes(2, "little")
        entry = bytearray(32)
    entry[:4] = (3 if interp else 1).to_bytes(4, "little")
    return bytes(header + entry)


def test_elf_checks(no_subprocess: None) -> None:
    assert seed.is_static_elf(_elf(62, interp=False))
    assert not seed.is_static_elf(_elf(62, interp=True))
    assert not seed.is_static_elf(_elf(3, interp=True, is64=False))
    assert seed.is_static_elf(_elf(3, interp=False, is64=False))
    assert not seed.is_static_elf(b"#!/bin/sh\n")
    assert seed.elf_arch(_elf(62, interp=False)) == "amd64"
    assert seed.elf_arch(_elf(183, interp=False)) == "arm64"
    assert seed.elf_arch(_elf(3, interp=False, is64=False)) is None
    assert seed.elf_arch(b"text") is None


def test_manifest_list_bytes(no_subprocess: None) -> None:
    children = [("sha256:" + "a" * 64, 428, "amd64"), ("sha256:" + "b" * 64, 430, "arm64")]
    body = seed.manifest_list(children)
    assert body == seed.manifest_list(children)
    document = json.loads(body)
    assert document["mediaType"] == seed.DOCKER_MANIFEST_LIST and document["schemaVersion"] == 2
    assert [(m["digest"], m["size"], m["platform"]) for m in document["manifests"]] == [
        ("sha256:" + "a" * 64, 428, {"architecture": "amd64", "os": "linux"}),
        ("sha256:" + "b" * 64, 430, {"architecture": "arm64", "os": "linux", "variant": "v8"}),
    ]
    assert {m["mediaType"] for m in document["manifests"]} == {seed.DOCKER_MANIFEST}


def test_debian_without_root_or_debootstrap_is_a_clear_tool_error(
        no_subprocess: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = Settings.resolve(tmp_path, {}, {}, {"state_dir": str(tmp_path / "state")})
    monkeypatch.setattr(seed, "_registry_children", lambda ctx, repository, tag: {})
    monkeypatch.setattr(seed.os, "geteuid", lambda: 1000)
    with pytest.raises(ToolMissingError, match="needs root") as err:
        seed.seed_upstream(settings, "127.0.0.1:1", names=["library/debian:bookworm"])
    assert err.value.exit_code == 6 and "mirror library/debian:bookworm" in str(err.value.hint)
    monkeypatch.setattr(seed.os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissingError, match="debootstrap not found") as err:
        seed.seed_upstream(settings, "127.0.0.1:1", names=["library/debian:bookworm"])
    assert err.value.hint == "apt-get install debootstrap"
    assert not list((tmp_path / "state" / "seed").glob("debian-*")), "nothing half-made is cached"


def test_seeding_keeps_architectures_another_seeder_added(
        no_subprocess: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """While this seeder made its images, another one put amd64 into the list: the list is
    read again before it is written, amd64 stays and only arm64 is copied."""
    settings = Settings.resolve(tmp_path, {}, {}, {"state_dir": str(tmp_path / "state")})
    theirs = ("sha256:" + "a" * 64, 428, "amd64")
    reads = iter([{}, {"amd64": theirs}])
    monkeypatch.setattr(seed, "_registry_children", lambda ctx, repository, tag: next(reads))
    monkeypatch.setattr(seed, "_layout", lambda ctx, image, arch: tmp_path / arch)
    copied: list[str] = []

    def copy(ctx: object, layout: Path, ref: str) -> tuple[str, int]:
        copied.append(ref)
        return "sha256:" + "b" * 64, 430

    lists: list[bytes] = []
    monkeypatch.setattr(seed, "_copy_to_registry", copy)
    monkeypatch.setattr(seed, "_put_list", lambda ctx, repository, tag, body: lists.append(body))
    ref = "127.0.0.1:1/mirror/library/debian:bookworm"
    assert seed.seed_upstream(settings, "127.0.0.1:1", names=["library/debian:bookworm"],
                              arches=["arm64", "amd64"]) == [f"{ref}-arm64", ref]
    assert copied == [f"{ref}-arm64"]
    (body,) = lists
    assert [(m["digest"], m["platform"]["architecture"]) for m in json.loads(body)["manifests"]] \
        == [(theirs[0], "amd64"), ("sha256:" + "b" * 64, "arm64")]


def test_foreign_debian_without_qemu_is_a_clear_tool_error(
        no_subprocess: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """s390x (or any foreign arch) with no qemu handler: the error says which architecture,
    what is missing and how to fix it, before anything is downloaded."""
    settings = Settings.resolve(tmp_path, {}, {}, {"state_dir": str(tmp_path / "state")})
    monkeypatch.setattr(seed, "_registry_children", lambda ctx, repository, tag: {})
    monkeypatch.setattr(seed.os, "geteuid", lambda: 0)
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("debootstrap", "chroot"):
        (tools / tool).write_text("#!/bin/sh\nexit 99\n")
        (tools / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    monkeypatch.setattr(seed.qemu, "BINFMT_DIR", tmp_path / "binfmt")
    monkeypatch.setattr(seed.qemu, "QEMU_BIN_DIR", tmp_path / "no-qemu")
    foreign = "s390x" if seed.host_arch() != "s390x" else "arm64"
    with pytest.raises(ToolMissingError) as err:
        seed.seed_upstream(settings, "127.0.0.1:1", names=["library/debian:bookworm"],
                           arches=[foreign])
    message = str(err.value)
    assert f"offline Debian base image for {foreign}" in message
    assert "qemu-user-static is not installed" in message and err.value.exit_code == 6
    assert "apt-get install qemu-user-static" in str(err.value.hint)
    assert "mirror library/debian:bookworm" in str(err.value.hint)
    assert not list((tmp_path / "state" / "seed").glob("*debootstrap-*"))


# -- real seeding of busybox -------------------------------------------------------------------

@pytest.fixture(scope="module")
def seed_settings(buildah_storage: dict[str, Path],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    for tool, package in (("buildah", "buildah"), ("skopeo", "skopeo"),
                          ("busybox", "busybox-static"), ("dpkg-deb", "dpkg")):
        require_tool(tool, package)
    state = tmp_path_factory.mktemp("seed-state")
    yield Settings.resolve(REPO_ROOT, {}, {}, {
        "state_dir": str(state), "storage_root": str(buildah_storage["root"]),
        "storage_runroot": str(buildah_storage["runroot"]), "storage_driver": "overlay",
    })
    unmount_storage(buildah_storage)


def unmount_storage(storage: dict[str, Path]) -> None:
    """buildah's overlay driver leaves mounts behind; drop this session's own (only those)."""
    root = str(storage["root"])
    subprocess.run(["buildah", "--root", root, "--runroot", str(storage["runroot"]),
                    "--storage-driver", "overlay", "rm", "--all"], capture_output=True, check=False)
    with open("/proc/self/mounts", encoding="utf-8") as handle:
        points = [line.split()[1] for line in handle]
    for point in sorted((p for p in points if p == root or p.startswith(root + "/")),
                        key=len, reverse=True):
        subprocess.run(["umount", point], capture_output=True, check=False)


def skopeo_raw(ref: str, *, config: bool = False) -> bytes:
    argv = ["skopeo", "inspect", "--raw", "--tls-verify=false"]
    if config:
        argv.insert(3, "--config")
    done = subprocess.run([*argv, f"docker://{ref}"], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def busybox_cache_ready() -> None:
    """arm64 busybox comes from apt (dpkg --add-architecture, apt-get update): root, once."""
    if os.geteuid() != 0 and not list(SEED_CACHE.glob("busybox-static_*_arm64.deb")):
        skip_or_fail("seeding arm64 busybox needs root once (apt-get download busybox-static:arm64)")


@pytest.mark.real
def test_seed_busybox_multi_arch_then_nothing_new(seed_settings: Settings,
                                                  registry: RegistryServer) -> None:
    busybox_cache_ready()
    address = registry.address
    ref = f"{address}/mirror/library/busybox:latest"
    pushed = seed.seed_upstream(seed_settings, address, names=["library/busybox:latest"],
                                cache_dir=SEED_CACHE)
    assert pushed == [f"{ref}-amd64", f"{ref}-arm64", ref]

    index = json.loads(skopeo_raw(ref))
    assert index["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    children = {m["platform"]["architecture"]: m for m in index["manifests"]}
    assert set(children) == {"amd64", "arm64"}
    for arch, child in children.items():
        # The list's children are exactly the per-arch tags (same bytes, same digest).
        per_arch = skopeo_raw(f"{ref}-{arch}")
        assert child["digest"] == digest(per_arch) and child["size"] == len(per_arch)
        assert json.loads(per_arch)["mediaType"] == \
            "application/vnd.docker.distribution.manifest.v2+json"
        config = json.loads(skopeo_raw(f"{address}/mirror/library/busybox@{child['digest']}",
                                       config=True))
        assert config["architecture"] == arch and config["os"] == "linux"
        assert config["config"]["Cmd"] == ["sh"]
    assert children["arm64"]["platform"].get("variant") == "v8"

    # Seeding again pushes nothing: the list is read (HEAD, GET), no writes, no blob traffic.
    mark = registry.log_mark()
    assert seed.seed_upstream(seed_settings, address, names=["library/busybox:latest"],
                              cache_dir=SEED_CACHE) == []
    requests = registry.requests_since(mark)
    assert [(r.method, r.path) for r in requests] == [
        ("HEAD", "/v2/mirror/library/busybox/manifests/latest"),
        ("GET", "/v2/mirror/library/busybox/manifests/latest")]


@pytest.mark.real
def test_seeding_another_registry_from_the_cache_gives_the_same_digests(
        seed_settings: Settings, registry: RegistryServer,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Seeds are cached images: a second registry gets the same bytes (and nothing is rebuilt,
    so no buildah image is left behind either)."""
    busybox_cache_ready()
    seed.seed_upstream(seed_settings, registry.address, names=["library/busybox:latest"],
                       cache_dir=SEED_CACHE)
    with RegistryServer(tmp_path_factory.mktemp("second-registry")) as other:
        seed.seed_upstream(seed_settings, other.address, names=["library/busybox:latest"],
                           cache_dir=SEED_CACHE)
        for tag in ("latest", "latest-amd64", "latest-arm64"):
            ours = skopeo_raw(f"{registry.address}/mirror/library/busybox:{tag}")
            theirs = skopeo_raw(f"{other.address}/mirror/library/busybox:{tag}")
            assert ours == theirs
        puts = [r for r in other.requests_since(0) if r.method == "PUT"
                and "/manifests/" in r.path]
        assert sorted(r.path.rsplit("/", 1)[1] for r in puts) == [
            "latest", "latest-amd64", "latest-arm64"]
    images = subprocess.run(
        ["buildah", "--root", str(seed_settings.storage_root), "--runroot",
         str(seed_settings.storage_runroot), "--storage-driver", "overlay", "images",
         "--format", "{{.Name}}"], capture_output=True, text=True, check=True).stdout
    assert "kiln-seed" not in images


@pytest.mark.real
def test_seeded_busybox_runs_on_this_machine(seed_settings: Settings,
                                             registry: RegistryServer) -> None:
    """The native child is a working root filesystem: its shell and applets run."""
    busybox_cache_ready()
    seed.seed_upstream(seed_settings, registry.address, names=["library/busybox:latest"],
                       cache_dir=SEED_CACHE)
    storage = ["buildah", "--root", str(seed_settings.storage_root), "--runroot",
               str(seed_settings.storage_runroot), "--storage-driver", "overlay"]
    ref = f"{registry.address}/mirror/library/busybox:latest"
    container = subprocess.run([*storage, "from", "--tls-verify=false", "--quiet", ref],
                               capture_output=True, text=True, check=True).stdout.strip()
    try:
        done = subprocess.run([*storage, "run", "--isolation", "chroot", container, "--",
                               "sh", "-c", "uname -m; ls -l /bin/sh; cat /etc/passwd | wc -l"],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.split("\n")
        assert lines[0] == os.uname().machine
        assert lines[1].endswith("/bin/sh -> /bin/busybox") and lines[2].strip() == "2"
    finally:
        subprocess.run([*storage, "rm", container], capture_output=True, check=False)
