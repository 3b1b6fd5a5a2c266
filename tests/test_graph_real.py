"""Input keys and the graph build through the real tools: buildah (this session's storage, or a
fresh empty one), a real registry, skopeo. Small busybox images keep it quick.

Each input kind the key covers is changed once and must cause a build; a new pipeline with the
same inputs, a touched file with the same content, and the same content again must not. The
graph build runs independent images in parallel, dependents FROM the digest this run made, and
two architectures of one image side by side in one storage."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest

from kiln import build
from kiln.errors import RegistryTransientError
from kiln.local_registry import RegistryServer
from kiln.settings import Settings
from test_build_real import (  # noqa: F401 - fixtures
    DRIVER,
    binfmt_arm64,
    ci_env,
    inspect,
    read_file,
    skopeo,
    tools,
    upstream,
)

pytestmark = pytest.mark.real

SMALL_IN = """\
ARG UPSTREAM_REGISTRY
FROM ${UPSTREAM_REGISTRY}/busybox:1
ARG GREETING=hello
#include "stamp"
COPY services/small /small
RUN cat /small/data.txt > /data && echo "$GREETING" > /greeting
"""
BASE_IN = """\
ARG UPSTREAM_REGISTRY
FROM ${UPSTREAM_REGISTRY}/busybox:1
#include "stamp"
"""
APP_IN = """\
ARG REGISTRY
ARG BASE_IMAGE_TAG=latest
FROM ${REGISTRY}/base:${BASE_IMAGE_TAG}
RUN cat /stamp > /app-stamp && sleep 1
"""
OTHER_IN = """\
ARG UPSTREAM_REGISTRY
FROM ${UPSTREAM_REGISTRY}/busybox:1
RUN uname -m > /arch && sleep 1
"""


def unique() -> str:
    return "t" + uuid.uuid4().hex[:8]


def project_at(root: Path) -> Path:
    (root / "builds").mkdir(parents=True)
    (root / "includes").mkdir()
    (root / "services" / "small").mkdir(parents=True)
    (root / "builds" / "small.in").write_text(SMALL_IN)
    (root / "builds" / "base.in").write_text(BASE_IN)
    (root / "builds" / "app.in").write_text(APP_IN)
    (root / "builds" / "other.in").write_text(OTHER_IN)
    (root / "includes" / "stamp").write_text("RUN echo stamp-1 > /stamp\n")
    (root / "services" / "small" / "data.txt").write_text("data-1\n")
    return root


def settings_for(project: Path, storage: Mapping[str, Path], env: Mapping[str, str],
                 **flags: object) -> Settings:
    values: dict[str, object] = {"storage_root": storage["root"],
                                 "storage_runroot": storage["runroot"],
                                 "storage_driver": DRIVER}
    values.update(flags)
    return Settings.resolve(project, {}, dict(env), values)


def fresh_storage(tmp_path: Path) -> dict[str, Path]:
    """An empty container storage (a new machine); the reuse path must not need one."""
    base = tmp_path / f"empty-{unique()}"
    return {"root": base / "root", "runroot": base / "runroot"}


def copy_image(source: str, destination: str) -> None:
    done = skopeo("copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                  f"docker://{source}", f"docker://{destination}")
    assert done.returncode == 0, done.stderr


@pytest.fixture
def scene(tmp_path: Path, shared_registry: RegistryServer, upstream: str  # noqa: F811
          ) -> tuple[Path, str, str]:
    """(project, our registry prefix, upstream prefix with ``busybox:1`` = amd64 busybox)."""
    registry = f"{shared_registry.address}/{unique()}"
    upstream_prefix = f"{shared_registry.address}/{unique()}-up"
    copy_image(f"{upstream}/library/busybox:latest-amd64", f"{upstream_prefix}/busybox:1")
    return project_at(tmp_path / "project"), registry, upstream_prefix


def test_same_inputs_reuse_and_every_input_kind_rebuilds(
        scene: tuple[Path, str, str], shared_registry: RegistryServer,
        buildah_storage: dict[str, Path], tmp_path: Path) -> None:
    project, registry, up = scene
    repo = registry.split("/", 1)[1]
    pipeline = iter(range(1, 100))

    def run(extra: Mapping[str, str] | None = None, *, empty: bool = False,
            rebuild: bool = False) -> build.BuildResult:
        env = {**ci_env(registry, up, str(next(pipeline))), **(extra or {})}
        storage = fresh_storage(tmp_path) if empty else buildah_storage
        (result,) = build.build(settings_for(project, storage, env), "small", rebuild=rebuild)
        return result

    first = run()
    assert not first.reused and first.key and first.digest
    labels = inspect(f"{registry}/small:p-1")["Labels"]
    assert isinstance(labels, dict) and labels["dev.kiln.input-key"] == first.key
    assert inspect(f"{registry}/small:k-{first.key[7:39]}")["Digest"] == first.digest

    # a new pipeline, an empty storage: the same digest by one manifest copy, nothing built
    mark = shared_registry.log_mark()
    again = run(empty=True)
    assert (again.reused, again.digest, again.key) == (True, first.digest, first.key)
    assert again.ref == f"{registry}/small:p-2" and again.commands == ()
    writes = [(r.method, r.path) for r in shared_registry.requests_since(mark)
              if r.method in {"PUT", "POST", "PATCH"}]
    assert writes == [("PUT", f"/v2/{repo}/small/manifests/p-2")]

    data = project / "services" / "small" / "data.txt"
    os.utime(data, (1_000_000, 1_000_000))
    data.write_text("data-1\n")  # touched, same content
    assert run().reused

    data.write_text("data-2\n")  # a changed file under the context
    changed = run()
    assert not changed.reused and changed.key != first.key
    assert read_file(buildah_storage, changed.ref, "/data") == "data-2\n"
    data.write_text("data-1\n")  # back to the first content: the first image again
    assert (run().digest, run().reused) == (first.digest, True)

    (project / "includes" / "stamp").write_text("RUN echo stamp-2 > /stamp\n")  # an include
    included = run()
    assert not included.reused and included.key not in {first.key, changed.key}
    (project / "includes" / "stamp").write_text("RUN echo stamp-1 > /stamp\n")
    assert run().reused

    with_arg = run({"KILN_BUILD_ARGS": "GREETING=hi"})  # a build arg
    assert not with_arg.reused
    assert read_file(buildah_storage, with_arg.ref, "/greeting") == "hi\n"
    assert run().reused

    # a changed upstream digest (the mirror's tag moved): a new key, a build FROM the new one
    copy_image(f"{registry}/small:p-1", f"{up}/busybox:1")
    moved = run()
    assert not moved.reused and moved.key != first.key
    containerfile = (project / ".kiln" / "build" / "small" / "Containerfile").read_text()
    assert f"FROM {up}/busybox@{inspect(f'{up}/busybox:1')['Digest']}" in containerfile

    forced = run(rebuild=True)  # --rebuild: built although the key is there
    assert not forced.reused and forced.key == moved.key


def test_graph_build_parallel_dependents_from_this_runs_digest(
        scene: tuple[Path, str, str], shared_registry: RegistryServer,
        buildah_storage: dict[str, Path], capfd: pytest.CaptureFixture[str]) -> None:
    project, registry, up = scene
    env = ci_env(registry, up, "31")
    settings = settings_for(project, buildah_storage, env)
    results = build.build(settings, ["app", "other"], jobs=2)
    assert [(r.image, r.reused, r.dependency) for r in results] == [
        ("base", False, True), ("other", False, False), ("app", False, False)]
    base, other, app = results
    assert app.ref == f"{registry}/app:p-31"
    containerfile = (settings.state_dir / "build" / "app" / "Containerfile").read_text()
    assert f"FROM {registry}/base@{base.digest}" in containerfile
    assert read_file(buildah_storage, app.ref, "/app-stamp") == "stamp-1\n"
    out = capfd.readouterr()
    log = out.out + out.err
    # base and other ran side by side: both started before either was pushed
    started = max(log.index("building dependency base"), log.index("building other"))
    assert started < min(log.index(f"pushed {base.ref}"), log.index(f"pushed {other.ref}"))

    # base's include changes: base and app are built again, other is reused
    (project / "includes" / "stamp").write_text("RUN echo stamp-2 > /stamp\n")
    second = build.build(settings_for(project, buildah_storage, {**env, "CI_PIPELINE_ID": "32"}),
                         ["app", "other"], jobs=2)
    assert [(r.image, r.reused) for r in second] == [("base", False), ("other", True),
                                                     ("app", False)]
    assert second[1].digest == other.digest
    assert read_file(buildah_storage, second[2].ref, "/app-stamp") == "stamp-2\n"

    # invoke graph: every key is in the registry now (read-only lookups)
    mark = shared_registry.log_mark()
    graph = build.describe_graph(settings_for(project, buildah_storage, env), ["app", "other"])
    assert graph.order() == ["base", "other", "app"]
    assert {name: (node.key, node.reusable, node.changed) for name, node in graph.nodes.items()} \
        == {r.image: (r.key, True, False) for r in second}
    assert {r.method for r in shared_registry.requests_since(mark)} <= {"GET", "HEAD"}
    (project / "services" / "small" / "data.txt").write_text("not read by these images\n")
    (project / "includes" / "stamp").write_text("RUN echo stamp-3 > /stamp\n")
    graph = build.describe_graph(settings_for(project, buildah_storage, env), None)
    assert [name for name in graph.order() if graph.nodes[name].changed] == [
        "base", "small", "app"]  # app: its base must be built first, so no key yet
    assert graph.nodes["app"].key is None and graph.nodes["other"].reusable


def test_two_architectures_of_one_image_build_side_by_side(
        scene: tuple[Path, str, str], shared_registry: RegistryServer,
        buildah_storage: dict[str, Path], upstream: str, binfmt_arm64: None  # noqa: F811
) -> None:
    """Both FROM the same multi-arch name in one storage: each build pulls its own
    architecture's digest, so neither takes the other's image."""
    project, registry, up = scene
    copy = skopeo("copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
                  f"docker://{upstream}/library/busybox:latest", f"docker://{up}/busybox:1")
    assert copy.returncode == 0, copy.stderr
    settings = settings_for(project, buildah_storage, ci_env(registry, up, "41"))
    results: dict[str, list[build.BuildResult]] = {}
    errors: list[BaseException] = []

    def one(arch: str) -> None:
        try:
            results[arch] = build.build(settings, "other", arch=arch)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(arch,)) for arch in ("amd64", "arm64")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for arch, machine in (("amd64", "x86_64"), ("arm64", "aarch64")):
        (result,) = results[arch]
        assert result.ref == f"{registry}/other:p-41-{arch}"
        assert inspect(result.ref)["Architecture"] == arch
        assert read_file(buildah_storage, result.ref, "/arch") == f"{machine}\n"
    assert results["amd64"][0].key != results["arm64"][0].key


def test_key_lookup_against_an_unreachable_registry_is_exit_4(
        scene: tuple[Path, str, str], buildah_storage: dict[str, Path]) -> None:
    project, _, _ = scene
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    registry = f"127.0.0.1:{port}/g"
    env = {**ci_env(registry, f"127.0.0.1:{port}/mirror", "51"),
           "KILN_REGISTRY_DEADLINE": "3"}
    before = subprocess.run(["buildah", "--root", str(buildah_storage["root"]), "--runroot",
                             str(buildah_storage["runroot"]), "--storage-driver", DRIVER,
                             "images", "--quiet"], capture_output=True, text=True).stdout
    with pytest.raises(RegistryTransientError) as err:
        build.build(settings_for(project, buildah_storage, env), "small")
    assert err.value.exit_code == 4
    after = subprocess.run(["buildah", "--root", str(buildah_storage["root"]), "--runroot",
                            str(buildah_storage["runroot"]), "--storage-driver", DRIVER,
                            "images", "--quiet"], capture_output=True, text=True).stdout
    assert after == before  # nothing built
