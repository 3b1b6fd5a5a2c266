"""Tiny real images: an OCI layout written here, pushed to a real registry by real skopeo.

skopeo converts to Docker v2s2 on push (``--format v2s2``) exactly as buildah push does, so the
registry holds what a kiln build would have pushed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzipped tar layer (deterministic) and its uncompressed diff id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    compressed = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
    return compressed, _digest(tar_bytes)


def write_oci_layout(
    path: Path,
    *,
    arch: str = "amd64",
    config_arch: str | None = None,
    variant: str | None = None,
    layers: list[dict[str, bytes]] | None = None,
    tag: str = "latest",
    label: str = "",
) -> Path:
    """An OCI image layout with one image for ``arch`` (its config may lie: ``config_arch``)."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def store(data: bytes) -> str:
        digest = _digest(data)
        (blobs / digest.split(":")[1]).write_bytes(data)
        return digest

    layer_specs = layers if layers is not None else [{"hello.txt": f"hello {arch} {label}\n".encode()}]
    layer_descs, diff_ids = [], []
    for files in layer_specs:
        blob, diff_id = _layer(files)
        layer_descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": store(blob), "size": len(blob)})
        diff_ids.append(diff_id)
    config: dict[str, object] = {
        "architecture": config_arch or arch,
        "os": "linux",
        "config": {"Labels": {"test": label}} if label else {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "created": "2024-01-01T00:00:00Z",
    }
    if variant:
        config["variant"] = variant
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": store(config_bytes), "size": len(config_bytes)},
        "layers": layer_descs,
    }
    manifest_bytes = json.dumps(manifest).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": store(manifest_bytes), "size": len(manifest_bytes),
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    }
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return path


def skopeo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run real skopeo; raise with its output on failure."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, env=full_env,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
    return proc


def push_layout(layout: Path, dest: str, *, fmt: str = "v2s2", tag: str = "latest",
                extra: tuple[str, ...] = ("--dest-tls-verify=false",)) -> None:
    """``skopeo copy oci:<layout>:<tag> docker://<dest>`` converting to ``fmt``."""
    skopeo("copy", "--quiet", "--format", fmt, *extra, f"oci:{layout}:{tag}", f"docker://{dest}")


def push_test_image(tmp: Path, dest: str, *, arch: str = "amd64", fmt: str = "v2s2",
                    label: str = "", config_arch: str | None = None,
                    variant: str | None = None,
                    extra: tuple[str, ...] = ("--dest-tls-verify=false",)) -> None:
    """Write a tiny image for ``arch`` and push it to ``dest`` (``host/repo:tag``)."""
    layout = tmp / f"layout-{arch}-{label or 'x'}-{abs(hash((dest, fmt))) % 10**8}"
    write_oci_layout(layout, arch=arch, config_arch=config_arch, variant=variant, label=label)
    push_layout(layout, dest, fmt=fmt, extra=extra)


def inspect_raw(ref: str, *extra: str) -> bytes:
    """``skopeo inspect --raw`` bytes of ``docker://ref``."""
    proc = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", *extra,
                           f"docker://{ref}"], capture_output=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise AssertionError(f"skopeo inspect {ref}: {proc.stderr.decode()}")
    return proc.stdout
