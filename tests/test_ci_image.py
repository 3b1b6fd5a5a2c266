"""The CI image for real: ``builds/buildah.in`` (every CI job runs in it) built by kiln, then kiln
run inside it builds and pushes an image: nested buildah with vfs storage, the image's
``STORAGE_DRIVER`` honoured.

Opt-in (``pytest -m ci_image``, or ``KILN_TEST_CI_IMAGE=1``): building the image downloads
buildah, skopeo, qemu and their dependencies from Debian and kiln's test tools from PyPI, several
minutes even on a fast line, more than the whole suite's budget allows. The build uses the
host's CA bundle (setting ``ca-bundle``), mounted for RUN steps only, so it works behind TLS
interception too.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO_ROOT, require_tool
from helpers.run import run_kiln
from kiln import build, seed
from kiln.local_registry import RegistryServer
from kiln.settings import Settings
from test_seed import SEED_CACHE, unmount_storage

pytestmark = [pytest.mark.real, pytest.mark.ci_image]

DRIVER = "overlay"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

HELLO = """\
/* hello: built by kiln inside the CI image */
ARG UPSTREAM_REGISTRY=docker.io
FROM ${UPSTREAM_REGISTRY}/library/busybox:latest
RUN echo "built inside the CI image" > /hello
CMD ["cat", "/hello"]
"""


def opted_in(config: pytest.Config) -> bool:
    return "ci_image" in str(config.getoption("markexpr") or "") \
        or os.environ.get("KILN_TEST_CI_IMAGE") == "1"


@pytest.fixture(scope="module")
def ci_image(request: pytest.FixtureRequest, buildah_storage: dict[str, Path],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``build --image buildah`` (base first) into a registry of this module, with the seeds
    the image inside needs (busybox); the environment for ``invoke run`` to find it."""
    if not opted_in(request.config):
        pytest.skip("opt-in: pytest -m ci_image (builds builds/buildah.in from Debian and PyPI)")
    for tool, package in (("buildah", "buildah"), ("skopeo", "skopeo")):
        require_tool(tool, package)
    with RegistryServer(tmp_path_factory.mktemp("ci-image-registry")) as registry:
        address = registry.address
        state = tmp_path_factory.mktemp("ci-image-state")
        values: dict[str, object] = {
            "state_dir": str(state), "storage_root": str(buildah_storage["root"]),
            "storage_runroot": str(buildah_storage["runroot"]), "storage_driver": DRIVER,
            "registry": address, "upstream_registry": f"{address}/mirror",
        }
        if CA_BUNDLE.is_file():
            values["ca_bundle"] = str(CA_BUNDLE)
        settings = Settings.resolve(REPO_ROOT, {}, {}, values)
        seed.seed_upstream(settings, address, cache_dir=SEED_CACHE)
        started = time.monotonic()
        results = build.build(settings, "buildah")
        print(f"CI image built in {time.monotonic() - started:.0f}s")  # noqa: T201 (figures)
        assert results[-1].ref == f"{address}/buildah:p-local"
        yield {"KILN_REGISTRY": address, "KILN_STATE_DIR": str(state),
               "KILN_STORAGE_ROOT": str(buildah_storage["root"]),
               "KILN_STORAGE_RUNROOT": str(buildah_storage["runroot"]),
               "STORAGE_DRIVER": DRIVER}
    unmount_storage(buildah_storage)


def test_kiln_inside_the_ci_image_builds_and_pushes(ci_image: dict[str, str],
                                                    tmp_path: Path) -> None:
    address = ci_image["KILN_REGISTRY"]
    project = tmp_path / "project"
    (project / "builds").mkdir(parents=True)
    (project / "builds" / "hello.in").write_text(HELLO)
    (project / "tasks.py").write_text("from kiln.tasks import namespace  # noqa: F401\n")
    (project / "pyproject.toml").write_text('[tool.kiln]\nbuilds-dir = "builds"\n')
    inside = (
        "set -e; echo STORAGE_DRIVER=$STORAGE_DRIVER; "
        "for tool in invoke buildah skopeo nox; do command -v $tool; done; "
        "invoke build --image hello; "
        # buildah itself ignores STORAGE_DRIVER; kiln passes it as --storage-driver
        "buildah --storage-driver \"$STORAGE_DRIVER\" images --format '{{.Name}}:{{.Tag}}'; "
        "ls /var/lib/containers/storage | grep -x vfs-images"
    )
    started = time.monotonic()
    # buildah inside needs to mount (its RUN steps' /proc, /dev): CAP_SYS_ADMIN, as a CI
    # runner gives its build jobs.
    done = run_kiln(project, "run", "--image", "buildah", "--cap-add", "CAP_SYS_ADMIN",
                    "--env", f"KILN_REGISTRY={address}",
                    "--env", f"KILN_UPSTREAM_REGISTRY={address}/mirror",
                    f"--code={project}", "--", "sh", "-c", inside,
                    env={**ci_image, "KILN_REGISTRY": address}, timeout=900)
    print(f"kiln inside the CI image: {time.monotonic() - started:.0f}s")  # noqa: T201
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "STORAGE_DRIVER=vfs"
    assert lines[1:5] == ["/opt/kiln/bin/invoke", "/usr/bin/buildah", "/usr/bin/skopeo",
                          "/opt/kiln/bin/nox"]
    assert f"{address}/hello:p-local" in lines and lines[-1] == "vfs-images"
    # Pushed: the registry has it, and it runs here with what the build inside wrote.
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{address}/hello:p-local"],
                         capture_output=True, check=True).stdout
    assert json.loads(raw)["mediaType"].endswith("manifest.v2+json")
    hello = run_kiln(project, "run", "--image", "hello", env=ci_image)
    assert hello.returncode == 0, hello.stderr
    assert hello.stdout.strip() == "built inside the CI image"
