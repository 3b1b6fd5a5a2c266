"""The repository's images for real: the offline Debian seed in a real registry, then
``builds/base.in`` -> ``python.in`` -> ``backend.in`` built by kiln.build with buildah (this
session's own storage, chroot isolation), and the backend run inside its image. Also the
``python-requirements`` variants (requirements.txt only; requirements.txt + pyproject.toml)
against a local package index, ``cleanup`` on a busybox base, and ``builds/busybox.in`` natively
and for arm64 under qemu.

The Debian root filesystem takes about a minute of debootstrap the first time (root and
Debian's apt repository needed); it is cached in ``.kiln/seed`` (or ``KILN_TEST_SEED_CACHE``),
so later runs seed in seconds."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from conftest import REPO_ROOT, require_tool, skip_or_fail
from kiln import build, qemu, seed
from kiln.arch import host_arch
from kiln.local_registry import RegistryServer
from kiln.settings import Settings
from test_seed import SEED_CACHE, unmount_storage

pytestmark = pytest.mark.real

DRIVER = "overlay"


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def storage(buildah_storage: dict[str, Path]) -> Iterator[dict[str, Path]]:
    for tool, package in (("buildah", "buildah"), ("skopeo", "skopeo"),
                          ("busybox", "busybox-static")):
        require_tool(tool, package)
    yield buildah_storage
    unmount_storage(buildah_storage)


@pytest.fixture(scope="module")
def images_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    require_tool("docker-registry", "docker-registry")
    with RegistryServer(tmp_path_factory.mktemp("images-registry")) as server:
        yield server


def make_settings(project: Path, storage: Mapping[str, Path], registry: str, state: Path,
                  **flags: object) -> Settings:
    """Settings as a developer's machine would resolve them, but with the test's registry,
    storage and state; no environment leaks in."""
    values: dict[str, object] = {
        "state_dir": str(state), "storage_root": str(storage["root"]),
        "storage_runroot": str(storage["runroot"]), "storage_driver": DRIVER,
        "registry": registry, "upstream_registry": f"{registry}/mirror",
    }
    values.update(flags)
    return Settings.resolve(project, {}, {}, values)


@pytest.fixture(scope="module")
def seeded(images_registry: RegistryServer, storage: dict[str, Path],
           tmp_path_factory: pytest.TempPathFactory) -> str:
    """The registry with ``mirror/library/debian:bookworm`` and ``mirror/library/busybox``."""
    have_debian = any(SEED_CACHE.glob(f"{seed.debian_cache_name(host_arch())}/manifest.json"))
    if not have_debian:
        if os.geteuid() != 0:
            skip_or_fail("the offline Debian image needs root once (debootstrap)")
        require_tool("debootstrap", "debootstrap")
    address = images_registry.address
    settings = make_settings(REPO_ROOT, storage, address, tmp_path_factory.mktemp("state"))
    pushed = seed.seed_upstream(settings, address, cache_dir=SEED_CACHE)
    assert f"{address}/mirror/library/debian:bookworm" in pushed
    return address


@pytest.fixture(scope="module")
def backend_build(seeded: str, storage: dict[str, Path],
                  tmp_path_factory: pytest.TempPathFactory) -> list[build.BuildResult]:
    """``build --image backend`` in this repository: base and python are in its graph (the
    FROM lines of the building blocks), so kiln builds them first; nothing is reused yet."""
    settings = make_settings(REPO_ROOT, storage, seeded, tmp_path_factory.mktemp("state"))
    return build.build(settings, "backend")


def buildah(storage: Mapping[str, Path], *args: str, check: bool = True) -> str:
    argv = ["buildah", "--root", str(storage["root"]), "--runroot", str(storage["runroot"]),
            "--storage-driver", DRIVER, *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check:
        assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip()


def run_in(storage: Mapping[str, Path], image: str, *command: str,
           options: tuple[str, ...] = ()) -> str:
    """``buildah run`` (chroot isolation) of ``command`` in a container of local ``image``."""
    container = buildah(storage, "from", "--pull-never", "--quiet", image)
    try:
        return buildah(storage, "run", "--isolation", "chroot", *options, container, "--",
                       *command)
    finally:
        buildah(storage, "rm", container, check=False)


def image_config(storage: Mapping[str, Path], image: str) -> dict[str, object]:
    data = json.loads(buildah(storage, "inspect", "--type", "image", image))
    config: dict[str, object] = data["Docker"]["config"]
    return config


# -- the seed -----------------------------------------------------------------------------------

def test_seeded_debian_is_a_bookworm_python_base(seeded: str, storage: dict[str, Path]) -> None:
    ref = f"{seeded}/mirror/library/debian:bookworm"
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                         capture_output=True, check=True).stdout
    # A manifest list, as on Docker Hub (foreign-arch builds add their child to it).
    assert json.loads(raw)["mediaType"] == \
        "application/vnd.docker.distribution.manifest.list.v2+json"
    config = json.loads(subprocess.run(
        ["skopeo", "inspect", "--config", "--raw", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True, check=True).stdout)
    assert config["architecture"] == host_arch() and config["config"]["Cmd"] == ["bash"]
    assert config["created"] == "2023-06-10T00:00:00Z"
    buildah(storage, "pull", "--tls-verify=false", "--quiet", ref)
    out = run_in(storage, ref, "sh", "-c",
                 ". /etc/os-release; echo $VERSION_CODENAME; python3 -c 'import venv, pip; "
                 "print(\"py ok\")'; ls /usr/share/python-wheels; "
                 "ls /var/cache/apt/archives")
    lines = out.splitlines()
    assert lines[0] == "bookworm" and lines[1] == "py ok"
    assert any(line.startswith("wheel-") for line in lines)
    assert not any(line.endswith(".deb") for line in lines), "debootstrap's packages stayed"
    # The host's files that debootstrap copies are not in the image (buildah run would bind
    # its own over them, so look at the image's filesystem itself).
    container = buildah(storage, "from", "--pull-never", "--quiet", ref)
    try:
        root = Path(buildah(storage, "mount", container))
        assert not (root / "etc/hostname").exists() and not (root / "etc/resolv.conf").exists()
        assert not list((root / "dev").iterdir())
        assert (root / "etc/apt/sources.list.d/debian.sources").is_file()
        assert os.stat(root / "usr/bin/python3").st_mtime == seed.SEED_EPOCH
    finally:
        buildah(storage, "umount", container, check=False)
        buildah(storage, "rm", container, check=False)


def test_seeding_again_only_reads_each_list(seeded: str, images_registry: RegistryServer,
                                             storage: dict[str, Path], tmp_path: Path) -> None:
    mark = images_registry.log_mark()
    settings = make_settings(REPO_ROOT, storage, seeded, tmp_path)
    assert seed.seed_upstream(settings, seeded, cache_dir=SEED_CACHE) == []
    assert sorted((r.method, r.path) for r in images_registry.requests_since(mark)) == [
        ("GET", "/v2/mirror/library/busybox/manifests/latest"),
        ("GET", "/v2/mirror/library/debian/manifests/bookworm"),
        ("HEAD", "/v2/mirror/library/busybox/manifests/latest"),
        ("HEAD", "/v2/mirror/library/debian/manifests/bookworm"),
    ]


# -- base -> python -> backend ------------------------------------------------------------------

def test_backend_builds_base_and_python_first(backend_build: list[build.BuildResult],
                                              seeded: str) -> None:
    assert [(r.image, r.ref, r.pushed, r.dependency, r.reused) for r in backend_build] == [
        ("base", f"{seeded}/base:p-local", True, True, False),
        ("python", f"{seeded}/python:p-local", True, True, False),
        ("backend", f"{seeded}/backend:p-local", True, False, False),
    ]
    for result in backend_build:
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                              f"docker://{result.ref}"], capture_output=True, check=True).stdout
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == result.digest


def test_backend_runs_its_self_test_inside_the_image(backend_build: list[build.BuildResult],
                                                     storage: dict[str, Path]) -> None:
    ref = backend_build[-1].ref
    out = run_in(storage, ref, "/code/run.sh", "--self-test")
    assert out.startswith("self-test ok: backend 0.1.0 on Python 3.11")


def test_backend_is_installed_in_the_venv_and_runs_unprivileged(
        backend_build: list[build.BuildResult], storage: dict[str, Path]) -> None:
    ref = backend_build[-1].ref
    out = run_in(storage, ref, "sh", "-c",
                 "id -un; python3 -c 'import backend; print(backend.__file__)'; "
                 "command -v kiln-example-backend", options=("--workingdir", "/"))
    assert out.splitlines() == ["app", "/opt/venv/lib/python3.11/site-packages/backend/__init__.py",
                                "/opt/venv/bin/kiln-example-backend"]
    config = image_config(storage, ref)
    assert config["Entrypoint"] == ["/code/run.sh"] and config["User"] == "1000:1000"
    assert config["WorkingDir"] == "/code" and "8080/tcp" in config["ExposedPorts"]  # type: ignore[operator]
    assert "PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        in config["Env"]  # type: ignore[operator]


def test_cleanup_left_no_package_or_pip_caches(backend_build: list[build.BuildResult],
                                               storage: dict[str, Path]) -> None:
    out = run_in(storage, backend_build[-1].ref, "sh", "-c",
                 "find /var/lib/apt/lists /var/cache/apt ! -type d; "
                 "ls -d /root/.cache/pip /home/app/.cache/pip 2>/dev/null; echo end",
                 options=("--user", "root"))
    assert out == "end"


def test_base_has_the_app_user_and_utf8(backend_build: list[build.BuildResult],
                                        storage: dict[str, Path]) -> None:
    base = backend_build[0].ref
    assert run_in(storage, base, "sh", "-c", "id app; echo $LANG $TZ") == \
        "uid=1000(app) gid=1000(app) groups=1000(app)\nC.UTF-8 UTC"
    assert image_config(storage, base).get("User", "") in ("", None)


def test_publish_in_a_second_pipeline_builds_nothing_and_keeps_the_digests(
        backend_build: list[build.BuildResult], seeded: str, tmp_path: Path) -> None:
    """The README's main command, ``IMAGE_NAME=backend nox -s publish``, in a fresh pipeline
    (new pipeline id, empty container storage, empty state): every image's input key is in
    the registry, so p-<id> of base, python and backend are manifest copies of the first
    pipeline's images; buildah is never run."""
    from helpers.run import clean_env

    env = clean_env({
        "CI": "true", "CI_PIPELINE_ID": "2002", "IMAGE_NAME": "backend",
        "KILN_REGISTRY": seeded, "KILN_UPSTREAM_REGISTRY": f"{seeded}/mirror",
        "KILN_STATE_DIR": str(tmp_path / "state"), "STORAGE_DRIVER": DRIVER,
        "KILN_STORAGE_ROOT": str(tmp_path / "storage" / "root"),
        "KILN_STORAGE_RUNROOT": str(tmp_path / "storage" / "runroot"),
    })
    done = subprocess.run([sys.executable, "-m", "nox", "-s", "publish", "--", "--json"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    document = json.loads(done.stdout[done.stdout.index("{"):])
    reused = {r["name"]: r["digest"] for r in document["results"] if r["action"] == "reused"}
    assert reused == {r.image: r.digest for r in backend_build}
    assert "STEP 1/" not in done.stdout + done.stderr  # nothing was built
    assert not (tmp_path / "storage" / "root").exists()
    for result in backend_build:
        ref = f"{seeded}/{result.image}:p-2002"
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                              f"docker://{ref}"], capture_output=True, check=True).stdout
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == result.digest


# -- python-requirements: requirements.txt only, and both --------------------------------------

def tiny_wheel(folder: Path) -> Path:
    """A real pure-Python wheel, ``tinydep 1.0``, for the local package index."""
    files = {
        "tinydep.py": b'VALUE = "tinydep 1.0"\n',
        "tinydep-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinydep\nVersion: 1.0\n",
        "tinydep-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: kiln-tests\n"
                                       b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("tinydep-1.0.dist-info/RECORD,,")
    path = folder / "tinydep-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        archive.writestr("tinydep-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return path


@pytest.fixture
def package_index(tmp_path: Path) -> Iterator[str]:
    """A find-links page on 127.0.0.1 (RUN steps under chroot isolation share the host's
    network): pip installs tinydep from it, nothing from the internet."""
    folder = tmp_path / "index"
    folder.mkdir()
    tiny_wheel(folder)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


APP_BUILD = """\
/* {name}: only the package's building blocks (this project has no includes/ folder) */
#define BASE_IMAGE_NAME python
#include "setup-from-base"
#define APP_DIR services/{name}
#include "python-requirements"
#include "cleanup"
"""


def write_app_project(root: Path) -> None:
    (root / "builds").mkdir(parents=True)
    for name in ("reqonly", "both"):
        (root / "builds" / f"{name}.in").write_text(APP_BUILD.format(name=name))
    reqonly = root / "services" / "reqonly"
    reqonly.mkdir(parents=True)
    (reqonly / "requirements.txt").write_text("tinydep==1.0\n")
    (reqonly / "run.sh").write_text('#!/bin/sh\nexec python3 -c "import tinydep; '
                                    'print(tinydep.VALUE)"\n')
    both = root / "services" / "both"
    (both / "bothapp").mkdir(parents=True)
    (both / "requirements.txt").write_text("tinydep==1.0\n")
    (both / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "bothapp"\nversion = "2.0"\ndependencies = ["tinydep"]\n'
        '[tool.setuptools]\npackages = ["bothapp"]\n')
    (both / "bothapp" / "__init__.py").write_text(
        "import tinydep\n\ndef greet():\n    return 'bothapp 2.0 with ' + tinydep.VALUE\n")
    # Not executable in the source: python-requirements makes it so.
    (both / "run.sh").write_text('#!/bin/sh\ncd / && exec python3 -c "import bothapp; '
                                 'print(bothapp.greet())"\n')
    for run in (reqonly / "run.sh", both / "run.sh"):
        run.chmod(0o644)


def test_python_requirements_with_requirements_only_and_with_both(
        backend_build: list[build.BuildResult], seeded: str, storage: dict[str, Path],
        package_index: str, tmp_path: Path) -> None:
    project = tmp_path / "project"
    write_app_project(project)
    options = f"--no-index --no-build-isolation --find-links {package_index}"
    settings = make_settings(project, storage, seeded, tmp_path / "state",
                             base_image_tag="p-local",
                             build_args={"PIP_INSTALL_OPTIONS": options})
    for name, expected in (("reqonly", "tinydep 1.0"), ("both", "bothapp 2.0 with tinydep 1.0")):
        (result,) = build.build(settings, name)
        assert run_in(storage, result.ref, "/code/run.sh") == expected
        pip = run_in(storage, result.ref, "python3", "-m", "pip", "list", "--format", "json")
        installed = {p["name"]: p["version"] for p in json.loads(pip)}
        assert installed["tinydep"] == "1.0"
        assert ("bothapp" in installed) == (name == "both")
        assert image_config(storage, result.ref)["Entrypoint"] == ["/code/run.sh"]


# -- busybox.in and cleanup on a busybox base ---------------------------------------------------

def test_busybox_image_natively_and_for_arm64(seeded: str, storage: dict[str, Path],
                                              tmp_path: Path) -> None:
    settings = make_settings(REPO_ROOT, storage, seeded, tmp_path)
    (native,) = build.build(settings, "busybox")
    assert run_in(storage, native.ref, "cat", "/etc/build-arch") == os.uname().machine
    if qemu.read_entry("arm64") is None:
        if os.geteuid() != 0 or not Path("/usr/bin/qemu-aarch64-static").exists():
            skip_or_fail("arm64 needs qemu-user-static and binfmt registration (root)")
        qemu.register_binfmt(["arm64"])
    (arm,) = build.build(settings, "busybox", arch="arm64")
    assert arm.ref == f"{seeded}/busybox:p-local-arm64"
    assert run_in(storage, arm.ref, "cat", "/etc/build-arch") == "aarch64"
    config = json.loads(subprocess.run(
        ["skopeo", "inspect", "--config", "--raw", "--tls-verify=false", f"docker://{arm.ref}"],
        capture_output=True, check=True).stdout)
    assert config["architecture"] == "arm64"


def test_cleanup_works_on_a_busybox_base(seeded: str, storage: dict[str, Path],
                                         tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "builds").mkdir(parents=True)
    (project / "builds" / "dirty.in").write_text(
        "ARG UPSTREAM_REGISTRY\nFROM ${UPSTREAM_REGISTRY}/library/busybox:latest\n"
        "RUN mkdir -p /var/lib/apt/lists/partial /var/cache/apt/archives/partial \\\n"
        "      /root/.cache/pip/http /home/u/.cache/pip /home/u/keep \\\n"
        " && touch /var/lib/apt/lists/deb.debian.org_dists /var/cache/apt/pkgcache.bin \\\n"
        "      /var/cache/apt/archives/x.deb /root/.cache/pip/http/blob \\\n"
        "      /home/u/.cache/pip/blob /home/u/keep/file\n"
        '#include "cleanup"\n')
    settings = make_settings(project, storage, seeded, tmp_path / "state")
    (result,) = build.build(settings, "dirty")
    out = run_in(storage, result.ref, "sh", "-c",
                 "find /var/lib/apt /var/cache/apt /root /home | sort")
    assert out.splitlines() == [
        "/home", "/home/u", "/home/u/.cache", "/home/u/keep", "/home/u/keep/file",
        "/root", "/root/.cache",
        "/var/cache/apt", "/var/cache/apt/archives", "/var/cache/apt/archives/partial",
        "/var/lib/apt", "/var/lib/apt/lists", "/var/lib/apt/lists/partial",
    ]
