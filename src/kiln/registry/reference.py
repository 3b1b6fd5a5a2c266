"""Image references (``host/repo/path:tag@sha256:...``), parsed and validated without I/O.

Follows the Docker reference grammar (distribution/reference): the first component is a
registry host when it contains ``.`` or ``:`` or is ``localhost``; otherwise the image is on
Docker Hub (``docker.io``). Docker Hub names are normalised here and nowhere else
(:func:`normalize`): ``alpine``, ``docker.io/alpine``, ``index.docker.io/alpine`` and
``registry-1.docker.io/library/alpine`` are all ``docker.io/library/alpine``, so two spellings of
one image compare equal wherever kiln meets them (mirror config, reference lint, summaries).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kiln.errors import InputError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
# Names Docker Hub answers to: its reference name, the legacy index name and the API host.
DOCKER_HUB_HOSTS = frozenset({DOCKER_HUB, "index.docker.io", DOCKER_HUB_API})

TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$")
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$")
_HOST = re.compile(r"^(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::[0-9]+)?$")


@dataclass(frozen=True)
class ImageRef:
    """A parsed reference: registry host, repository path, optional tag and digest."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if pinned, else the tag (or ``latest``)."""
        return self.digest or self.tag or "latest"

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host that serves the registry API (Docker Hub's differs from its name)."""
        return api_host(self.host)

    def with_tag(self, tag: str) -> ImageRef:
        return ImageRef(self.host, self.repository, validate_tag(tag), None)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def api_host(host: str) -> str:
    return DOCKER_HUB_API if host in DOCKER_HUB_HOSTS else host


def is_docker_hub(host: str) -> bool:
    """Whether ``host`` is one of Docker Hub's names (its pulls are rate limited)."""
    return host in DOCKER_HUB_HOSTS


def normalize(ref: ImageRef) -> ImageRef:
    """Docker Hub's canonical form: host ``docker.io``, single-component names under
    ``library/`` (``docker.io/alpine`` is ``docker.io/library/alpine``). Other hosts unchanged."""
    if ref.host not in DOCKER_HUB_HOSTS:
        return ref
    repository = ref.repository if "/" in ref.repository else f"library/{ref.repository}"
    if ref.host == DOCKER_HUB and repository == ref.repository:
        return ref
    return ImageRef(DOCKER_HUB, repository, ref.tag, ref.digest)


def validate_tag(tag: str, what: str = "tag") -> str:
    """``tag`` if it is a valid tag name (``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``), else InputError."""
    if not isinstance(tag, str) or not TAG_RE.match(tag):
        raise InputError(
            f"invalid {what} {tag!r}",
            hint="a tag is 1-128 characters of letters, digits, '_', '.' and '-', "
                 "not starting with '.' or '-'",
        )
    return tag


def validate_digest(digest: str) -> str:
    if not DIGEST_RE.match(digest):
        raise InputError(f"invalid digest {digest!r}", hint="expected sha256:<64 hex digits>")
    return digest


def validate_repository(repository: str) -> str:
    """A repository path: lowercase components separated by ``/``."""
    parts = repository.split("/")
    if not repository or not all(_COMPONENT.match(part) for part in parts):
        raise InputError(
            f"invalid repository name {repository!r}",
            hint="use lowercase letters, digits and . _ - separated by '/'",
        )
    return repository


def check_host(host: str, where: str) -> str:
    """``host[:port]`` as a registry host, or an :class:`InputError` naming ``where``: the
    Docker host grammar, and a port between 1 and 65535."""
    if not _HOST.match(host):
        raise InputError(f"invalid registry host {host!r} in {where!r}",
                         hint="expected host[:port], e.g. registry.example.com or 127.0.0.1:5000")
    port = host.rsplit("]", 1)[-1].rpartition(":")[2] if ":" in host.rsplit("]", 1)[-1] else ""
    if port and not 0 < int(port) <= 65535:
        raise InputError(f"invalid registry host {host!r} in {where!r}: port {int(port)} is not "
                         "between 1 and 65535", hint="fix the port of the registry")
    return host


def split_repository(prefix_and_path: str) -> tuple[str, str]:
    """``host/path`` -> (host, path); the host is required (kiln never guesses Docker Hub here)."""
    text = prefix_and_path.strip().rstrip("/")
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme):]
    host, _, path = text.partition("/")
    check_host(host, prefix_and_path)
    return host, path


def parse_reference(text: str) -> ImageRef:
    """Parse ``[host/]repo/path[:tag][@digest]``, Docker Hub names normalised (:func:`normalize`);
    raises :class:`InputError` when malformed."""
    original = text
    text = text.strip()
    if not text:
        raise InputError("empty image reference")
    digest: str | None = None
    if "@" in text:
        text, digest = text.split("@", 1)
        validate_digest(digest)
    tag: str | None = None
    last_slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > last_slash:
        text, tag = text[:colon], text[colon + 1:]
        validate_tag(tag)
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        host, repository = check_host(first, original), rest
    else:
        host, repository = DOCKER_HUB, text
    try:
        validate_repository(repository)
    except InputError as exc:
        raise InputError(f"invalid image reference {original!r}: {exc.message}",
                         hint=exc.hint) from None
    return normalize(ImageRef(host=host, repository=repository, tag=tag, digest=digest))
