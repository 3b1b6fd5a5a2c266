"""README promises held through the real stack (docs/claims.md): the built image's config is
scanned before the push, whatever brought the credential in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import require_tool
from kiln import build
from kiln.credentials import SecretInImage
from kiln.local_registry import RegistryServer
from kiln.registry.client import RegistryClient
from kiln.settings import Settings

pytestmark = pytest.mark.real

GLPAT = "glpat-" + "Zq7_" * 5  # a fake token with a real shape


def test_a_credential_the_base_image_brings_in_stops_the_push(
        tmp_path: Path, registry: RegistryServer, buildah_storage: dict[str, Path]) -> None:
    """The build file is clean (the pre-build check passes); the base image's config carries a
    GitLab token in a label, which the built image inherits. Only the pre-push scan of the
    built image can see it: exit 2, nothing pushed, the token never printed."""
    for tool in ("buildah", "skopeo"):
        require_tool(tool, tool)
    host = registry.address
    leaky_base(buildah_storage, tmp_path, f"{host}/upstream/leaky:1")
    project = tmp_path / "project"
    (project / "builds").mkdir(parents=True)
    (project / "builds" / "app.in").write_text(f"FROM {host}/upstream/leaky:1\n"
                                               "COPY payload /payload\n")
    (project / "payload").write_text("clean\n")
    mark = registry.log_mark()  # after the base image was pushed
    settings = Settings.resolve(project, {}, {"KILN_REGISTRY": f"{host}/team"}, {
        "storage_root": buildah_storage["root"], "storage_runroot": buildah_storage["runroot"],
        "storage_driver": "overlay"})
    with pytest.raises(SecretInImage) as info:
        build.build(settings, "app")
    message = str(info.value)
    assert info.value.exit_code == 2
    assert f"refusing to push {host}/team/app:p-local: its config carries 1 credential" in message
    assert "GitLab token" in message and GLPAT not in message
    assert info.value.hint is not None and "nothing was pushed" in info.value.hint
    with RegistryClient(host) as client:
        catalog = client._http.get(f"http://{host}/v2/_catalog").json()["repositories"]
    assert catalog == ["upstream/leaky"]  # team/app never reached the registry
    writes = [f"{r.method} {r.path}" for r in registry.requests_since(mark)
              if r.method in {"PUT", "POST", "PATCH", "DELETE"}]
    assert writes == []


def leaky_base(storage: dict[str, Path], tmp_path: Path, ref: str) -> None:
    """A base image (made with buildah, not kiln) whose config has a token in a label."""
    def buildah(*args: str) -> str:
        argv = ["buildah", "--root", str(storage["root"]), "--runroot", str(storage["runroot"]),
                "--storage-driver", "overlay", *args]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{argv}: {done.stderr}"
        return done.stdout.strip()

    (tmp_path / "base.txt").write_text("base\n")
    container = buildah("from", "scratch")
    try:
        buildah("copy", container, str(tmp_path / "base.txt"), "/base.txt")
        buildah("config", "--label", f"deploy-token={GLPAT}", container)
        buildah("commit", "--format", "docker", container, ref)
    finally:
        buildah("rm", container)
    buildah("push", "--tls-verify=false", ref)
