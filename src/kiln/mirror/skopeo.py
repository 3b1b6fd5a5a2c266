"""The skopeo adapter: copy one image, all architectures, digests preserved.

kiln decides *whether* to copy from HEAD requests; skopeo does the copy itself (manifests and
blobs, with cross-repository mounts where the registry allows). The source is always addressed by
the digest the HEAD saw, so what lands at the destination is exactly what was planned even if the
upstream tag moves during the run, and ``--preserve-digests`` makes skopeo fail rather than
convert a manifest (the destination index digest equals the source's).

Credentials reach skopeo through a temporary auth file (mode 0600, deleted afterwards) built
from the same lookup the registry client uses, never through the command line.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kiln import console, proc
from kiln.errors import (
    KilnError,
    RegistryAuthError,
    RegistryError,
    RegistryTransientError,
)
from kiln.registry.client import credentials_for, is_loopback
from kiln.registry.reference import ImageRef
from kiln.settings import Settings


class CopyRateLimited(RegistryTransientError):
    """The source answered 429 (toomanyrequests) during a copy."""


@dataclass(frozen=True)
class CopyOptions:
    """Everything about a skopeo copy that is not the two references."""

    tls_verify: bool = True
    loopback_tls: bool = False  # loopback registries speak plain HTTP unless this is set
    authfile: Path | None = None
    cert_dir: Path | None = None
    retries: int = 3


    def verify(self, host: str) -> bool:
        """Loopback registries speak plain HTTP (as the registry client assumes); others follow
        the ``tls_verify`` setting."""
        if is_loopback(host) and not self.loopback_tls:
            return False
        return self.tls_verify


def copy_args(source: ImageRef, destination: ImageRef, options: CopyOptions,
              digestfile: Path) -> list[str]:
    """The skopeo command line (pure). ``source`` must carry the digest to copy."""
    if source.digest is None:
        raise ValueError("copy by digest only: the source reference needs its digest")
    if destination.tag is None:
        raise ValueError("the destination needs a tag")
    args = [
        "skopeo", "copy", "--all", "--preserve-digests", "--quiet",
        f"--retry-times={options.retries}",
        f"--src-tls-verify={'true' if options.verify(source.host) else 'false'}",
        f"--dest-tls-verify={'true' if options.verify(destination.host) else 'false'}",
        "--digestfile", str(digestfile),
    ]
    if options.authfile is not None:
        args += ["--src-authfile", str(options.authfile), "--dest-authfile", str(options.authfile)]
    if options.cert_dir is not None:
        args += ["--src-cert-dir", str(options.cert_dir), "--dest-cert-dir", str(options.cert_dir)]
    args += [f"docker://{source.name}@{source.digest}",
             f"docker://{destination.name}:{destination.tag}"]
    return args


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


@dataclass
class SkopeoCopier:
    """Runs ``skopeo copy`` for the mirror runner (thread-safe: no shared mutable state)."""

    options: CopyOptions
    workdir: Path

    def copy(self, source: ImageRef, destination: ImageRef) -> str:
        """Copy and return the digest skopeo wrote (the destination's manifest digest)."""
        handle, name = tempfile.mkstemp(prefix="digest-", dir=self.workdir)
        os.close(handle)
        digestfile = Path(name)
        try:
            argv = copy_args(source, destination, self.options, digestfile)
            result = proc.run(argv, check=False, what="skopeo copy")
            if result.returncode != 0 and failure_hint(result.stdout + result.stderr):
                # skopeo's "must be converted" hides whether the destination refused the
                # manifest type (permanent) or failed once (transient): one more try tells.
                # The blobs are there already, so the retry costs a few HEADs and one PUT.
                result = proc.run(argv, check=False, what="skopeo copy")
            if result.returncode != 0:
                output = (result.stdout + result.stderr).strip()
                tail = "\n".join("    " + line for line in output.splitlines()[-12:])
                error = classify_failure(output)
                raise error(f"skopeo copy {source} -> {destination} failed "
                            f"(exit {result.returncode})" + (f":\n{tail}" if tail else ""),
                            hint=failure_hint(output))
            return digestfile.read_text(encoding="utf-8").strip()
        finally:
            digestfile.unlink(missing_ok=True)


def copy_options(settings: Settings, *, authfile: Path | None = None,
                 cert_dir: Path | None = None, retries: int = 3) -> CopyOptions:
    """The copy options for ``settings`` (pure; the files are made by :func:`copier_for`)."""
    return CopyOptions(tls_verify=settings.tls_verify,
                       loopback_tls=bool(getattr(settings, "loopback_tls", False)),
                       authfile=authfile, cert_dir=cert_dir, retries=retries)


def planned_copy_command(settings: Settings, hosts: set[str], retries: int, source: ImageRef,
                         destination: ImageRef) -> list[str]:
    """The ``skopeo copy`` argv a real run would use, for the dry run's plan (placeholders for
    the temporary files; never the credentials)."""
    needs_auth = any(credentials_for(host, settings) is not None for host in sorted(hosts))
    options = copy_options(
        settings, retries=retries,
        authfile=Path("<temporary auth file, mode 0600>") if needs_auth else None,
        cert_dir=Path("<temporary cert dir>") if settings.ca_bundle is not None else None)
    return copy_args(source, destination, options, Path("<digest file>"))


@contextmanager
def copier_for(settings: Settings, hosts: set[str], retries: int) -> Iterator[SkopeoCopier]:
    """A :class:`SkopeoCopier` with a private auth file / cert dir for ``hosts``; cleans up.

    The auth file is created 0600 (``O_EXCL``) in a fresh 0700 directory that is removed when
    the run ends, whatever happens.
    """
    proc.which("skopeo")
    workdir = Path(tempfile.mkdtemp(prefix="kiln-mirror-"))
    try:
        os.chmod(workdir, 0o700)
        auths: dict[str, dict[str, str]] = {}
        for host in sorted(hosts):
            creds = credentials_for(host, settings)
            if creds is None:
                continue
            if creds.username == "<token>":
                auths[host] = {"identitytoken": str(creds.password)}
            else:
                raw = f"{creds.username}:{creds.password}".encode()
                auths[host] = {"auth": base64.b64encode(raw).decode()}
                console.register_secret(auths[host]["auth"])
        authfile: Path | None = None
        if auths:
            authfile = workdir / "auth.json"
            fd = os.open(authfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"auths": auths}, handle)
        cert_dir: Path | None = None
        if settings.ca_bundle is not None:
            cert_dir = workdir / "certs"
            cert_dir.mkdir()
            shutil.copyfile(settings.ca_bundle, cert_dir / "ca.crt")
        yield SkopeoCopier(copy_options(settings, authfile=authfile, cert_dir=cert_dir,
                                        retries=retries), workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
