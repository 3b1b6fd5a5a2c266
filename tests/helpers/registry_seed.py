"""Many small real images, written straight into a registry over its HTTP API.

Tag-set tests and the mirror benchmark need repositories with hundreds of tags and multi-arch
indexes whose children change one at a time; building each with buildah would take minutes.
Every image here is a real Docker v2s2 manifest (its own config blob, one shared layer) that
skopeo and kiln copy like any other; an index is a real manifest list over such children.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass

import httpx

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
PLATFORMS = (("amd64", None), ("arm64", "v8"), ("arm", "v7"), ("ppc64le", None))


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(text: str) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = text.encode()
        info = tarfile.TarInfo("seed.txt")
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))
    plain = raw.getvalue()
    return gzip.compress(plain, compresslevel=1, mtime=0), digest_of(plain)


@dataclass(frozen=True)
class Pushed:
    digest: str
    media_type: str
    children: tuple[str, ...] = ()


class Seeder:
    """Writes images into ``registry`` (``host:port``, plain HTTP)."""

    def __init__(self, registry: str) -> None:
        self.http = httpx.Client(base_url=f"http://{registry}", timeout=30)
        self._layers: dict[tuple[str, str], tuple[str, int, str]] = {}

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Seeder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def blob(self, repo: str, data: bytes) -> str:
        digest = digest_of(data)
        if self.http.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
            return digest
        started = self.http.post(f"/v2/{repo}/blobs/uploads/")
        started.raise_for_status()
        location = started.headers["location"]
        sep = "&" if "?" in location else "?"
        done = self.http.put(f"{location}{sep}digest={digest}", content=data,
                             headers={"Content-Type": "application/octet-stream"})
        done.raise_for_status()
        return digest

    def _shared_layer(self, repo: str, text: str) -> tuple[str, int, str]:
        key = (repo, text)
        if key not in self._layers:
            blob, diff_id = _layer(text)
            self._layers[key] = (self.blob(repo, blob), len(blob), diff_id)
        return self._layers[key]

    def manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        answer = self.http.put(f"/v2/{repo}/manifests/{reference}", content=body,
                               headers={"Content-Type": media_type})
        answer.raise_for_status()
        return digest_of(body)

    def image_body(self, repo: str, label: str, arch: str = "amd64",
                   variant: str | None = None, layer: str = "shared") -> bytes:
        """A v2s2 manifest (not yet pushed) whose config is unique to ``label``."""
        layer_digest, layer_size, diff_id = self._shared_layer(repo, layer)
        config: dict[str, object] = {
            "architecture": arch, "os": "linux", "config": {"Labels": {"seed": label}},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "created": "2024-01-01T00:00:00Z",
        }
        if variant:
            config["variant"] = variant
        config_bytes = json.dumps(config, sort_keys=True).encode()
        config_digest = self.blob(repo, config_bytes)
        return json.dumps({
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": config_digest,
                       "size": len(config_bytes)},
            "layers": [{"mediaType": DOCKER_LAYER, "digest": layer_digest, "size": layer_size}],
        }, indent=3).encode()

    def image(self, repo: str, tag: str, label: str | None = None) -> Pushed:
        body = self.image_body(repo, label or f"{repo}:{tag}")
        return Pushed(self.manifest(repo, tag, body, DOCKER_MANIFEST), DOCKER_MANIFEST)

    def index(self, repo: str, tag: str, labels: dict[str, str]) -> Pushed:
        """A manifest list over one image per platform of :data:`PLATFORMS` (``labels``:
        architecture -> config label; change one label to change one child)."""
        entries = []
        children = []
        for arch, variant in PLATFORMS:
            body = self.image_body(repo, labels[arch], arch, variant)
            digest = self.manifest(repo, digest_of(body), body, DOCKER_MANIFEST)
            children.append(digest)
            platform: dict[str, str] = {"architecture": arch, "os": "linux"}
            if variant:
                platform["variant"] = variant
            entries.append({"mediaType": DOCKER_MANIFEST, "digest": digest, "size": len(body),
                            "platform": platform})
        body = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": entries},
                          indent=3).encode()
        return Pushed(self.manifest(repo, tag, body, DOCKER_LIST), DOCKER_LIST, tuple(children))


def version_tags(majors: range = range(14, 20), minors: int = 10, patches: int = 5) -> list[str]:
    """``MAJOR.MINOR.PATCH`` tags: 6 x 10 x 5 = 300 by default."""
    return [f"{major}.{minor}.{patch}" for major in majors for minor in range(minors)
            for patch in range(patches)]
