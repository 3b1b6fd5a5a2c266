"""Scanning images for credentials where they live: in local storage or in a registry.

Reads image configs through the adapters (``Buildah.inspect_config``, the registry client) and
hands them to :func:`kiln.credentials.scan_config`, the one place that decides what a credential
is. Used before a push (build), and on the registry side before ``tag``/``deploy-*`` give a tag
to an image and before ``manifest`` assembles an index (:func:`refuse_credentials`, with the
configs those tasks read anyway or one config GET per image).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from kiln.credentials import SECRET_HINT, Finding, SecretInImage, scan_config
from kiln.registry import media
from kiln.registry.media import Manifest

if TYPE_CHECKING:
    from kiln.buildah import Buildah
    from kiln.registry.client import RegistryClient


class ImageReader(Protocol):
    """Reads one repository's manifests and configs (:class:`kiln.promote.Registry` does)."""

    def get(self, ref: str) -> Manifest: ...

    def get_config(self, digest: str) -> dict[str, Any]: ...


class _ClientReader:
    def __init__(self, client: RegistryClient, repository: str) -> None:
        self.client, self.repository = client, repository

    def get(self, ref: str) -> Manifest:
        return self.client.get_manifest(self.repository, ref)

    def get_config(self, digest: str) -> dict[str, Any]:
        body = self.client.get_blob(self.repository, digest)
        return media.parse_json(body, f"{self.client.host}/{self.repository}@{digest} config")


def platform_label(platform: Mapping[str, Any] | None) -> str:
    """``linux/arm64/v8`` for an index child's platform (``""`` when there is none)."""
    if not platform:
        return ""
    parts = [str(platform.get("os", "")), str(platform.get("architecture", ""))]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(p for p in parts if p)


def manifest_configs(reader: ImageReader, manifest: Manifest,
                     where: str) -> list[tuple[str, dict[str, Any]]]:
    """(platform label, config) of an image manifest, or of each child of an index."""
    manifests = [("", manifest)]
    if manifest.is_index:
        manifests = [(platform_label(child.platform) or child.digest, reader.get(child.digest))
                     for child in media.index_children(manifest.body)]
    return [(label, reader.get_config(media.config_descriptor(item.body, where).digest))
            for label, item in manifests]


def registry_image_configs(client: RegistryClient, repository: str,
                           reference: str) -> list[tuple[str, dict[str, Any]]]:
    """(platform label, config) of ``repository:reference``; one per child of an index."""
    reader = _ClientReader(client, repository)
    return manifest_configs(reader, reader.get(reference),
                            f"{client.host}/{repository}:{reference}")


def scan_configs(configs: Sequence[tuple[str, Mapping[str, Any]]], name: str, *,
                 allow: Iterable[str] = ()) -> list[Finding]:
    """Findings in (platform label, config) pairs of the image ``name``."""
    findings: list[Finding] = []
    for label, config in configs:
        findings += scan_config(config, image=f"{name}{f' [{label}]' if label else ''}",
                                allow=allow)
    return findings


def refuse_credentials(configs: Sequence[tuple[str, Mapping[str, Any]]], name: str, *,
                       action: str, allow: Iterable[str] = ()) -> None:
    """A :class:`~kiln.credentials.SecretInImage` (exit 2) when a config of ``name`` carries a
    credential: registry-side tasks do not spread such an image under more tags."""
    findings = scan_configs(configs, name, allow=allow)
    if findings:
        listing = "\n".join(f"  - {f}" for f in findings)
        raise SecretInImage(
            f"refusing to {action} {name}: its config carries credentials:\n{listing}",
            hint=f"nothing was written; rebuild the image without them. {SECRET_HINT}")


def scan_local_image(buildah: Buildah, ref: str, *, allow: Iterable[str] = ()) -> list[Finding]:
    """Findings in the config of a local image (never pulls)."""
    return scan_config(buildah.inspect_config(ref), image=ref, allow=allow)


def scan_registry_image(client: RegistryClient, repository: str, reference: str, *,
                        allow: Iterable[str] = ()) -> list[Finding]:
    """Findings in the config(s) of a registry image; an index is scanned child by child."""
    return scan_configs(registry_image_configs(client, repository, reference),
                        f"{client.host}/{repository}:{reference}", allow=allow)
