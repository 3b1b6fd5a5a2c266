"""Scanning images for credentials where they live: in local storage or in a registry.

Reads image configs through the adapters (``Buildah.inspect_config``, the registry client) and
hands them to :func:`kiln.credentials.scan_config`, the one place that decides what a credential
is. Used before a push (build) and before tagging a registry image.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kiln.credentials import Finding, scan_config
from kiln.registry import media

if TYPE_CHECKING:
    from kiln.buildah import Buildah
    from kiln.registry.client import RegistryClient


def platform_label(platform: Mapping[str, Any] | None) -> str:
    """``linux/arm64/v8`` for an index child's platform (``""`` when there is none)."""
    if not platform:
        return ""
    parts = [str(platform.get("os", "")), str(platform.get("architecture", ""))]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(p for p in parts if p)


def registry_image_configs(client: RegistryClient, repository: str,
                           reference: str) -> list[tuple[str, dict[str, Any]]]:
    """(platform label, config) of ``repository:reference``; one per child of an index."""
    manifest = client.get_manifest(repository, reference)
    where = f"{client.host}/{repository}:{reference}"
    manifests = [("", manifest)]
    if manifest.is_index:
        manifests = [(platform_label(child.platform) or child.digest,
                      client.get_manifest(repository, child.digest))
                     for child in media.index_children(manifest.body)]
    configs = []
    for label, item in manifests:
        descriptor = media.config_descriptor(item.body, where)
        body = client.get_blob(repository, descriptor.digest)
        configs.append((label, media.parse_json(body, f"{where} config")))
    return configs


def scan_local_image(buildah: Buildah, ref: str, *, allow: Iterable[str] = ()) -> list[Finding]:
    """Findings in the config of a local image (never pulls)."""
    return scan_config(buildah.inspect_config(ref), image=ref, allow=allow)


def scan_registry_image(client: RegistryClient, repository: str, reference: str, *,
                        allow: Iterable[str] = ()) -> list[Finding]:
    """Findings in the config(s) of a registry image; an index is scanned child by child."""
    findings: list[Finding] = []
    name = f"{client.host}/{repository}:{reference}"
    for label, config in registry_image_configs(client, repository, reference):
        findings += scan_config(config, image=f"{name}{f' [{label}]' if label else ''}",
                                allow=allow)
    return findings
