"""Architecture names: one spelling everywhere (OCI/Go names), whatever the user typed."""

from __future__ import annotations

import platform

from kiln.errors import InputError

SUPPORTED_ARCHES: tuple[str, ...] = ("amd64", "arm64", "ppc64le", "s390x")

_ALIASES = {
    "amd64": "amd64",
    "x86_64": "amd64",
    "x86-64": "amd64",
    "x64": "amd64",
    "arm64": "arm64",
    "aarch64": "arm64",
    "arm64v8": "arm64",
    "ppc64le": "ppc64le",
    "ppc64el": "ppc64le",
    "powerpc64le": "ppc64le",
    "s390x": "s390x",
}

# qemu's name for each architecture (binfmt handler and qemu-<name>-static).
QEMU_NAMES = {"amd64": "x86_64", "arm64": "aarch64", "ppc64le": "ppc64le", "s390x": "s390x"}


def normalize_arch(name: str) -> str:
    """Return the canonical name of an architecture, or raise :class:`InputError`."""
    key = name.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    raise InputError(
        f"unsupported architecture {name!r}",
        hint=f"use one of: {', '.join(SUPPORTED_ARCHES)} (aliases such as aarch64 and x86_64 work)",
    )


def parse_arches(value: str) -> tuple[str, ...]:
    """Parse ``IMAGE_ARCHES`` ("amd64 arm64", commas allowed) into unique canonical names."""
    result: list[str] = []
    for word in value.replace(",", " ").split():
        arch = normalize_arch(word)
        if arch not in result:
            result.append(arch)
    return tuple(result)


def host_arch() -> str:
    """The architecture of this machine, canonical."""
    return normalize_arch(platform.machine())
