"""The skopeo adapter: the one place that builds, runs and explains ``skopeo copy``.

promote (a tag to another registry), mirror (upstream images) and seed (cached offline images)
copy through here, so the same TLS and credential situation always gives the same flags:

* ``--all --preserve-digests``: every architecture, and skopeo fails rather than convert a
  manifest, so the destination digest equals the source's. Sources are addressed by digest where
  the caller planned one, so what lands is what was planned even if the upstream tag moves.
* ``--src-/--dest-tls-verify`` per side from :func:`kiln.registry.access.tls_verify` (loopback
  registries speak plain HTTP unless ``loopback_tls``); credentials and the CA bundle reach
  skopeo through :func:`kiln.registry.access.tool_access` (a temporary 0600 auth file and cert
  dir), never through the command line.
* ``--digestfile``: the digest skopeo wrote, checked by the caller.

Failures are classified (:func:`classify_failure`) into kiln's exit-code categories; a 429 is
:class:`CopyRateLimited`, which the mirror's rate-limit gate acts on.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kiln import proc
from kiln.errors import KilnError, RegistryAuthError, RegistryError, RegistryTransientError
from kiln.registry import access
from kiln.registry.access import ToolAccess
from kiln.registry.reference import ImageRef
from kiln.settings import Settings

PLANNED_DIGEST_FILE = Path("<digest file>")


class CopyRateLimited(RegistryTransientError):
    """The source answered 429 (toomanyrequests) during a copy."""


# -- command lines (pure) ----------------------------------------------------------------------

def docker_ref(image: ImageRef) -> str:
    """``docker://host/repo@digest`` when ``image`` carries a digest, else ``:tag``."""
    if image.digest is not None:
        return f"docker://{image.name}@{image.digest}"
    if image.tag is None:
        raise ValueError(f"{image}: a copy needs a tag or a digest")
    return f"docker://{image.name}:{image.tag}"


def copy_argv(settings: Settings, source: str, destination: str, tools: ToolAccess, *,
              retries: int = 3, digestfile: Path | None = None) -> list[str]:
    """The ``skopeo copy`` argv from ``source`` to ``destination`` (skopeo transports:
    ``docker://...``, ``dir:...``). Per ``docker://`` side: TLS verification as
    :mod:`kiln.registry.access` decides for its host, the auth file and the cert dir."""
    argv = ["skopeo", "copy", "--all", "--preserve-digests", "--quiet",
            f"--retry-times={retries}"]
    for side, ref in (("src", source), ("dest", destination)):
        if not ref.startswith("docker://"):
            continue
        host = access.registry_host(ref[len("docker://"):])
        verify = access.tls_verify(settings, host)
        argv.append(f"--{side}-tls-verify={'true' if verify else 'false'}")
        if tools.authfile is not None:
            argv += [f"--{side}-authfile", str(tools.authfile)]
        if tools.cert_dir is not None:
            argv += [f"--{side}-cert-dir", str(tools.cert_dir)]
    if digestfile is not None:
        argv += ["--digestfile", str(digestfile)]
    return [*argv, source, destination]


def planned_copy_argv(settings: Settings, hosts: Iterable[str], source: str, destination: str,
                      *, retries: int = 3) -> list[str]:
    """The argv a real copy would run, for a dry run's plan (placeholders for the temporary
    files; never a credential; nothing written)."""
    return copy_argv(settings, source, destination, access.planned_tool_access(settings, hosts),
                     retries=retries, digestfile=PLANNED_DIGEST_FILE)


# -- failures (pure) ---------------------------------------------------------------------------

def classify_failure(output: str) -> type[KilnError]:
    """Which kind of failure skopeo's output describes (drives the exit code and rate limiting)."""
    text = output.lower()
    if "toomanyrequests" in text or "429 too many requests" in text or "status 429" in text:
        return CopyRateLimited
    if any(word in text for word in ("unauthorized", "denied", "authentication required",
                                     "status 401", "status 403")):
        return RegistryAuthError
    if any(word in text for word in ("manifest unknown", "name unknown", "blob unknown",
                                     "invalid reference", "preserve digests", "preserving digests",
                                     "cannot be preserved")):
        return RegistryError
    return RegistryTransientError


def failure_hint(output: str) -> str | None:
    """What skopeo's message means when it hides the real cause."""
    if "preserve digests" in output and "must be converted" in output:
        return ("the destination did not accept the manifest as it is, twice (skopeo then tries "
                "other formats, which digest preservation forbids, and reports only that): most "
                "likely the destination registry does not support this manifest type; if it "
                "does, its answers were transient failures - rerun")
    return None


def is_rate_limited(output: str) -> bool:
    """Whether skopeo's output says the source's pull limit was hit (HTTP 429)."""
    return classify_failure(output) is CopyRateLimited


# -- running -----------------------------------------------------------------------------------

def run_copy(argv: list[str], what: str) -> proc.Result:
    """Run a ``skopeo copy`` argv; a failure raises the classified error with skopeo's output."""
    result = proc.run(argv, check=False, what="skopeo copy")
    if result.returncode != 0 and failure_hint(result.stdout + result.stderr):
        # skopeo's "must be converted" hides whether the destination refused the manifest type
        # (permanent) or failed once (transient): one more try tells. The blobs are there
        # already, so the retry costs a few HEADs and one PUT.
        result = proc.run(argv, check=False, what="skopeo copy")
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        tail = "\n".join("    " + line for line in output.splitlines()[-12:])
        error = classify_failure(output)
        raise error(f"skopeo copy {what} failed (exit {result.returncode})"
                    + (f":\n{tail}" if tail else ""), hint=failure_hint(output))
    return result


@dataclass
class Copier:
    """Copies with one auth file / cert dir (thread-safe: no shared mutable state)."""

    settings: Settings
    tools: ToolAccess
    workdir: Path
    retries: int = 3

    def argv(self, source: str, destination: str, digestfile: Path | None = None) -> list[str]:
        return copy_argv(self.settings, source, destination, self.tools, retries=self.retries,
                         digestfile=digestfile)

    def copy_to(self, source: str, destination: str, what: str) -> str:
        """Copy between two skopeo transports; returns the digest skopeo wrote."""
        handle, name = tempfile.mkstemp(prefix="digest-", dir=self.workdir)
        os.close(handle)
        digestfile = Path(name)
        try:
            run_copy(self.argv(source, destination, digestfile), what)
            return digestfile.read_text(encoding="utf-8").strip()
        finally:
            digestfile.unlink(missing_ok=True)

    def copy(self, source: ImageRef, destination: ImageRef) -> str:
        """Copy ``source`` (by its digest) to ``destination:tag``; returns the digest written."""
        if source.digest is None:
            raise ValueError("copy by digest only: the source reference needs its digest")
        if destination.tag is None:
            raise ValueError("the destination needs a tag")
        return self.copy_to(docker_ref(source), docker_ref(destination),
                            f"{source} -> {destination}")


@contextmanager
def copier(settings: Settings, hosts: Iterable[str], *, retries: int = 3) -> Iterator[Copier]:
    """A :class:`Copier` with the credentials and CA for ``hosts``; the temporary files are
    removed when the block ends, whatever happens."""
    proc.which("skopeo")
    workdir = Path(tempfile.mkdtemp(prefix="kiln-skopeo-"))
    try:
        os.chmod(workdir, 0o700)
        with access.tool_access(settings, hosts) as tools:
            yield Copier(settings, tools, workdir, retries)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
