"""kiln's registry access: references, media types, auth and the HTTP client."""

from kiln.registry.client import (
    Credentials,
    Manifest,
    ManifestInfo,
    RateLimit,
    RegistryClient,
    open_client,
)
from kiln.registry.reference import ImageRef, parse_reference

__all__ = [
    "Credentials",
    "ImageRef",
    "Manifest",
    "ManifestInfo",
    "RateLimit",
    "RegistryClient",
    "open_client",
    "parse_reference",
]
