"""A registry client for manifests, tags and small blobs (OCI distribution spec, Docker v2 API).

Why our own client rather than skopeo for these operations: retagging, assembling an index and
removing one tag are pure manifest operations. skopeo and buildah re-check (or re-download) every
blob to do them; this client sends exactly the requests the operation needs
(``docs/registry-operations.md``).

Guarantees:

* Manifests are bytes. They are stored, compared and re-sent exactly as the registry served them,
  with their own Content-Type, so digests never change. Every body is checked against its digest.
* Authentication: anonymous, Basic, and the Bearer token flow (``WWW-Authenticate`` challenge,
  one token per repository scope with the ``pull``/``push``/``delete`` actions the request needs,
  cached until it expires). An auth file's identity token is exchanged as an OAuth2 refresh token
  (POST to the token service), never sent as a Basic password. After the first challenge the
  client authenticates up front.
* Where credentials go: to the registry's own origin, and to a token service only when the
  registry's *own* challenge names it (a realm on another host is normal: Docker Hub, GitLab).
  Never to a host a request was redirected to (its challenge is not learnt), never to a Link or
  Location on another origin, and never over plain HTTP unless the registry itself is plain HTTP.
* Bounded: every answer is read as a stream against a limit (manifests 4 MiB, the registry's
  own limit; image configs 4 MiB; a tag-list page 8 MiB; tokens and errors 1 MiB), checked from
  ``Content-Length`` and while reading; tag-list pagination has a page limit and loop detection;
  each operation (one request with its retries, waits and token fetch) has one deadline
  (``registry-deadline``). Each refusal says which limit was hit.
* Retries with exponential backoff and jitter on connection errors, 5xx and 429 (``Retry-After``
  honoured, within the deadline); never on other 4xx. A 401/403 is a :class:`RegistryAuthError`
  naming the registry, the repository and the operation. Bytes that do not match their digest
  are a :class:`RegistryIntegrityError` at once (the same registry serves the same bytes again).
* Secrets never appear in messages or ``repr``: passwords are masked, tokens are never printed.
* The HTTP transport is injectable (``transport=httpx.MockTransport(...)``), and so are the
  clock and the sleep, so retries, limits and the authentication flows are unit-tested without a
  server or waiting. See ``docs/registry-operations.md``.
"""

from __future__ import annotations

import base64
import email.utils
import json
import random
import re
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urljoin, urlsplit

import httpx

from kiln import console
from kiln.errors import (
    RegistryAuthError,
    RegistryError,
    RegistryIntegrityError,
    RegistryTransientError,
)
from kiln.registry import media
from kiln.registry.access import credentials_for, is_loopback, plain_http
from kiln.registry.auth import Challenge, Credentials, actions_for, parse_challenge, scope_for
from kiln.registry.media import Manifest, ManifestInfo, RateLimit
from kiln.registry.reference import DIGEST_RE, api_host

if TYPE_CHECKING:
    from kiln.settings import Settings

__all__ = [
    "Credentials",
    "Manifest",
    "ManifestInfo",
    "RateLimit",
    "RegistryClient",
    "open_client",
]

USER_AGENT = "kiln (+registry client; httpx)"

MiB = 1024 * 1024
# distribution refuses manifests above 4 MiB on PUT, so a bigger answer is not a manifest.
MANIFEST_LIMIT = 4 * MiB
# image configs: the limit skopeo and podman use (containers/image ``MaxConfigBodySize``).
CONFIG_LIMIT = 4 * MiB
TAG_PAGE_LIMIT = 8 * MiB
SMALL_LIMIT = 1 * MiB  # token answers, error bodies, upload answers
MAX_TAG_PAGES = 1000  # 1000 pages of n=1000: a million tags
DEADLINE = 120.0  # seconds; the registry-deadline setting
_REDIRECTS = (301, 302, 303, 307, 308)


def _size(limit: int) -> str:
    return f"{limit // MiB} MiB" if limit % MiB == 0 else f"{limit} bytes"


@dataclass(frozen=True)
class Answer:
    """A registry's answer, read within its limit (the connection is closed)."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    url: httpx.URL
    reason_phrase: str = ""
    foreign: bool = False  # redirected to another origin than the registry's

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _Integrity(Exception):
    """A body that does not match its digest (raised by a ``validate`` hook)."""


@dataclass
class _Token:
    value: str = ""
    actions: frozenset[str] = frozenset()
    expires: float = 0.0

    def __repr__(self) -> str:
        return f"_Token(actions={sorted(self.actions)}, expires={self.expires:.0f})"


class RegistryClient:
    """One registry host; methods take the repository path (``group/project/image``)."""

    def __init__(
        self,
        host: str,
        *,
        scheme: str | None = None,
        credentials: Credentials | None = None,
        tls_verify: bool = True,
        ca_bundle: Path | None = None,
        max_attempts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        max_retry_after: float = 120.0,
        timeout: float = 60.0,
        deadline: float = DEADLINE,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.host = host
        self.api_host = api_host(host)
        self.scheme = scheme or ("http" if is_loopback(host) else "https")
        if self.scheme not in {"http", "https"}:
            raise RegistryError(f"unsupported scheme {scheme!r} for registry {host}")
        self.credentials = credentials
        if credentials is not None:
            console.register_secret(str(credentials.password))
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.timeout = timeout
        self.deadline = deadline
        self.max_tag_pages = MAX_TAG_PAGES
        self._sleep = sleep
        self._clock = clock
        self.last_ratelimit: RateLimit | None = None
        self.request_count = 0
        self._auth_scheme: str | None = None  # "basic" / "bearer" once a challenge was seen
        self._challenge: Challenge | None = None
        self._tokens: dict[str, _Token] = {}
        verify: ssl.SSLContext | bool
        if not tls_verify:
            verify = False
        else:
            verify = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
        self._http = httpx.Client(
            verify=verify,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
            follow_redirects=True,  # httpx drops Authorization on a redirect to another origin
            max_redirects=5,
            headers={"User-Agent": USER_AGENT},
            transport=transport,
        )

    def __repr__(self) -> str:
        who = self.credentials.username if self.credentials else "anonymous"
        return f"RegistryClient({self.scheme}://{self.api_host}, user={who!r})"

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_settings(cls, host: str, settings: Settings, **kwargs: Any) -> RegistryClient:
        """A client for ``host`` with TLS and credentials decided by :mod:`kiln.registry.access`."""
        kwargs.setdefault("credentials", credentials_for(host, settings))
        kwargs.setdefault("tls_verify", settings.tls_verify)
        kwargs.setdefault("ca_bundle", settings.ca_bundle)
        kwargs.setdefault("scheme", "http" if plain_http(settings, host) else "https")
        kwargs.setdefault("deadline", settings.registry_deadline)
        return cls(host, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- manifests -------------------------------------------------------------------------
    def head_manifest(self, repo: str, ref: str) -> ManifestInfo | None:
        """Digest, media type and size of ``repo:ref``; ``None`` if it does not exist."""
        resp = self._request("HEAD", repo, f"manifests/{ref}", f"check manifest {ref}",
                             headers={"Accept": media.ACCEPT}, ok=(200,), missing=(404,))
        if resp is None:
            return None
        digest = resp.headers.get("Docker-Content-Digest", "")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        size = int(resp.headers.get("Content-Length", "0") or 0)
        if DIGEST_RE.match(ref):
            digest = ref
        if not digest or media_type not in media.MANIFEST_TYPES:
            manifest = self.get_manifest(repo, ref)
            return ManifestInfo(manifest.digest, manifest.media_type, len(manifest.body),
                                self.last_ratelimit)
        return ManifestInfo(digest, media_type, size, RateLimit.from_headers(resp.headers))

    def get_manifest(self, repo: str, ref: str) -> Manifest:
        """The manifest (list) ``repo:ref``, byte for byte; :class:`RegistryError` if absent,
        :class:`RegistryIntegrityError` if its bytes do not match the digest asked for (or the
        one the registry states) or exceed :data:`MANIFEST_LIMIT`."""

        def check(resp: Answer) -> None:
            computed = media.digest_of(resp.content)
            expected = ref if DIGEST_RE.match(ref) else resp.headers.get("Docker-Content-Digest")
            if expected and expected.startswith("sha256:") and expected != computed:
                raise _Integrity(f"manifest {ref}: the registry served bytes that do not match "
                                 f"digest {expected} (they hash to {computed})")

        resp = self._request("GET", repo, f"manifests/{ref}", f"read manifest {ref}",
                             headers={"Accept": media.ACCEPT}, ok=(200,), validate=check,
                             limit=MANIFEST_LIMIT, what="a manifest (the registry's own limit)")
        assert resp is not None
        body = resp.content
        return Manifest(media.media_type_of(body, resp.headers.get("Content-Type")), body,
                        media.digest_of(body))

    def put_manifest(self, repo: str, ref: str, manifest: Manifest) -> str:
        """Store ``manifest`` (exact bytes, own Content-Type) as ``repo:ref``; returns its digest."""
        resp = self._request("PUT", repo, f"manifests/{ref}", f"write manifest {ref}",
                             headers={"Content-Type": manifest.media_type},
                             content=manifest.body, ok=(200, 201, 202))
        assert resp is not None
        returned = resp.headers.get("Docker-Content-Digest")
        if returned and returned != manifest.digest:
            raise RegistryError(
                f"{self.host}/{repo}: registry stored {ref} as {returned}, expected "
                f"{manifest.digest}",
                hint="the registry rewrote the manifest; kiln keeps manifests byte for byte",
            )
        return manifest.digest

    def delete_manifest(self, repo: str, digest: str, *, missing_ok: bool = False) -> None:
        """Delete the manifest ``digest`` — and with it every tag that points to it."""
        if not DIGEST_RE.match(digest):
            raise RegistryError(f"delete_manifest needs a digest, got {digest!r}")
        self._request("DELETE", repo, f"manifests/{digest}", f"delete manifest {digest}",
                      ok=(200, 202, 204), missing=(404,) if missing_ok else ())

    def list_tags(self, repo: str) -> list[str]:
        """Every tag of ``repo`` (follows ``Link: rel=next`` pagination on the registry's own
        origin, at most :attr:`max_tag_pages` pages, never a page twice); empty if the
        repository does not exist."""
        tags: list[str] = []
        path = "tags/list?n=1000"
        seen: set[str] = set()
        while path:
            url = self._url(repo, path)
            if url in seen:
                raise RegistryIntegrityError(
                    f"{self.host}/{repo}: the tag list's pagination loops (Link: rel=next "
                    f"leads back to {_path_of(url)}, already read)",
                    hint="the registry's tag listing is broken; kiln stops instead of reading "
                         "forever (rerun after it is fixed)")
            if len(seen) >= self.max_tag_pages:
                raise RegistryIntegrityError(
                    f"{self.host}/{repo}: the tag list has more than {self.max_tag_pages} pages "
                    "(kiln's page limit for tags/list)",
                    hint="the registry keeps answering rel=next; kiln stops instead of reading "
                         "forever")
            seen.add(url)
            resp = self._request("GET", repo, url, "list tags", ok=(200,), missing=(404,),
                                 limit=TAG_PAGE_LIMIT, what="a page of the tag list")
            if resp is None:
                return tags
            data = media.parse_json(resp.content, f"{self.host}/{repo} tag list")
            tags.extend(str(t) for t in (data.get("tags") or []))
            path = self._next_page(resp, repo)
        return tags

    def _next_page(self, resp: Answer, repo: str) -> str:
        """The absolute URL of the ``rel="next"`` page; only on the registry's own origin."""
        target = _next_link(resp.headers.get("Link"))
        if not target:
            return ""
        url = urljoin(str(resp.url), target)
        if _origin(url) != _origin(self._base()):
            raise RegistryIntegrityError(
                f"{self.host}/{repo}: the tag list's next page is on another host "
                f"({_origin(url)[1]}); kiln does not send the registry's credentials there",
                hint="the registry's pagination links must stay on the registry")
        return url

    # -- blobs -----------------------------------------------------------------------------
    def blob_exists(self, repo: str, digest: str) -> bool:
        resp = self._request("HEAD", repo, f"blobs/{digest}", f"check blob {digest}",
                             ok=(200,), missing=(404,))
        return resp is not None

    def get_blob(self, repo: str, digest: str, *, limit: int = CONFIG_LIMIT) -> bytes:
        """A small blob (an image config, at most ``limit`` bytes), checked against its digest
        — not for layers."""

        def check(resp: Answer) -> None:
            computed = media.digest_of(resp.content)
            if computed != digest:
                raise _Integrity(f"blob {digest}: the registry served bytes that do not match "
                                 f"its digest (they hash to {computed})")

        resp = self._request("GET", repo, f"blobs/{digest}", f"read blob {digest}", ok=(200,),
                             validate=check, limit=limit, what="an image config blob")
        assert resp is not None
        return resp.content

    def put_blob(self, repo: str, data: bytes) -> str:
        """Upload a small blob monolithically (POST + PUT) unless it exists; returns its digest."""
        digest = media.digest_of(data)
        if self.blob_exists(repo, digest):
            return digest
        start = self._request("POST", repo, "blobs/uploads/", "start blob upload",
                              ok=(202,), content=b"")
        assert start is not None
        location = start.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.host}/{repo}: blob upload answered without a Location")
        url = urljoin(str(start.url), location)
        url += ("&" if "?" in url else "?") + urlencode({"digest": digest})
        try:
            self._request("PUT", repo, url, f"upload blob {digest}", ok=(201, 204),
                          headers={"Content-Type": "application/octet-stream"}, content=data)
        except RegistryError:
            # A retried PUT whose first attempt completed finds its upload session gone.
            if not self.blob_exists(repo, digest):
                raise
        return digest

    # -- referrers and deletes (kiln.referrers, kiln.prune) ----------------------------------
    def referrers(self, repo: str, digest: str) -> bytes | None:
        """The OCI referrers API's index of the artifacts whose subject is ``digest``; ``None``
        when the registry has no referrers API (it answers 404, as distribution 2.8 does: a
        registry with the API never does; 400/405/406 from registries that route the path
        elsewhere mean the same)."""
        if not DIGEST_RE.match(digest):
            raise RegistryError(f"referrers needs a digest, got {digest!r}")
        resp = self._request("GET", repo, f"referrers/{digest}",
                             f"list the referrers of {digest}",
                             headers={"Accept": media.OCI_INDEX}, ok=(200,),
                             missing=(404, 400, 405, 406))
        return None if resp is None else resp.content

    def deletes_allowed(self, repo: str) -> bool:
        """Whether the registry deletes manifests in ``repo``, asked without deleting anything:
        a DELETE of a digest no manifest has answers 404 (or 202) where deletes work and 405
        where they are disabled. Needs the ``delete`` permission like a real delete."""
        probe = "sha256:" + "0" * 64
        resp = self._request("DELETE", repo, f"manifests/{probe}", "check that deletes are "
                             "allowed", ok=(200, 202, 204, 400, 404, 405))
        assert resp is not None
        return resp.status_code != 405

    # -- the request machinery -------------------------------------------------------------
    def _base(self) -> str:
        return f"{self.scheme}://{self.api_host}"

    def _url(self, repo: str, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self._base()}/v2/{repo}/{path}"

    def _request(
        self,
        method: str,
        repo: str,
        path: str,
        operation: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        ok: tuple[int, ...] = (200,),
        missing: tuple[int, ...] = (),
        validate: Callable[[Answer], None] | None = None,
        limit: int = SMALL_LIMIT,
        what: str = "this answer",
    ) -> Answer | None:
        """Send with auth and retries; ``None`` for a status in ``missing``; errors otherwise.

        One deadline (:attr:`deadline` seconds) covers the whole operation: every attempt, every
        wait and the token fetch. Credentials go only to the registry's own origin."""
        url = self._url(repo, path)
        own_origin = _origin(url) == _origin(self._base())
        deadline = self._clock() + self.deadline
        needed = actions_for(method)
        resp: Answer | None = None
        for auth_round in range(2):
            all_headers = dict(headers or {})
            if own_origin:
                all_headers.update(self._authorization(repo, needed, operation, deadline))
            resp = self._send(method, url, all_headers, content, repo, operation, validate,
                              limit=limit, what=what, deadline=deadline)
            if resp.status_code != 401 or auth_round == 1:
                break
            if resp.foreign or not own_origin:
                raise RegistryAuthError(
                    f"registry {self.host}: '{operation}' on repository {repo} was redirected "
                    f"to {resp.url.host}, which asks for credentials: kiln sends the registry's "
                    "credentials only to the registry and to the token service its own "
                    "challenge names",
                    hint="a registry's redirects (to its storage) must work without the "
                         "registry's credentials; check the registry's storage configuration "
                         "or the proxy in front of it",
                )
            challenge = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
            if challenge is None or challenge.scheme not in {"basic", "bearer"}:
                break
            if not self._learn(challenge, repo, needed):
                break
        assert resp is not None
        status = resp.status_code
        if status in ok:
            return resp
        if status in missing:
            return None
        if status in (401, 403):
            raise self._auth_error(status, repo, operation, needed, resp)
        detail = _error_detail(resp)
        where = f"{self.host}/{repo}"
        if status == 405 and method == "DELETE":
            raise RegistryError(
                f"{where}: {operation} refused: deleting is disabled on this registry ({detail})",
                hint="enable deletes (docker-registry: storage.delete.enabled: true) or remove "
                     "the tag in the registry's own UI/API",
            )
        if status == 404:
            raise RegistryError(f"{where}: {operation}: not found ({detail})",
                                hint="check the image name, tag and registry")
        raise RegistryError(f"{where}: {operation} failed: HTTP {status} ({detail})")

    def _exchange(self, method: str, url: str, headers: Mapping[str, str],
                  content: bytes | None, *, limit: int, what: str, where: str, operation: str,
                  deadline: float) -> Answer:
        """One HTTP exchange, its body read as a stream: at most ``limit`` bytes for a success
        (checked from Content-Length, then while reading; more is a
        :class:`RegistryIntegrityError`), at most :data:`SMALL_LIMIT` of an error's body."""
        remaining = max(deadline - self._clock(), 0.001)
        timeout = httpx.Timeout(min(self.timeout, remaining), connect=min(15.0, remaining))
        request = self._http.build_request(method, url, headers=headers, content=content,
                                           timeout=timeout)
        resp = self._http.send(request, stream=True)
        try:
            success = 200 <= resp.status_code < 300
            cap = limit if success else SMALL_LIMIT
            too_big = RegistryIntegrityError(
                f"{where}: {operation}: the registry's answer is larger than {_size(limit)}, "
                f"kiln's limit for {what}",
                hint="nothing was used or written; the registry (or a proxy in front of it) "
                     "serves something that cannot be right: check it, then rerun")
            declared = resp.headers.get("Content-Length", "")
            if (success and method != "HEAD" and declared.isdigit()
                    and int(declared) > cap):
                raise too_big
            chunks: list[bytes] = []
            total = 0
            if method != "HEAD":
                for chunk in resp.iter_bytes():
                    total += len(chunk)
                    if total > cap:
                        if success:
                            raise too_big
                        chunks.append(chunk[: cap - (total - len(chunk))])
                        break
                    chunks.append(chunk)
                    if self._clock() > deadline:
                        raise httpx.ReadTimeout("the operation's deadline passed while reading",
                                                request=request)
            return Answer(resp.status_code, resp.headers, b"".join(chunks), resp.url,
                          resp.reason_phrase, foreign=_origin(str(resp.url)) != _origin(url))
        finally:
            resp.close()

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        content: bytes | None,
        repo: str,
        operation: str,
        validate: Callable[[Answer], None] | None = None,
        *,
        limit: int = SMALL_LIMIT,
        what: str = "this answer",
        deadline: float | None = None,
    ) -> Answer:
        """One logical request with retries on connection errors, 5xx and 429, within the
        operation's deadline."""
        where = f"{self.host}/{repo}"
        started = self._clock()
        if deadline is None:
            deadline = started + self.deadline
        last = ""
        attempts = 0
        for attempt in range(1, self.max_attempts + 1):
            attempts = attempt
            delay: float | None = None
            try:
                self.request_count += 1
                resp = self._exchange(method, url, headers, content, limit=limit, what=what,
                                      where=where, operation=operation, deadline=deadline)
            except httpx.TooManyRedirects as exc:
                raise RegistryError(f"{where}: {operation}: too many redirects ({exc})",
                                    hint="the registry (or a proxy) redirects in a loop") from None
            except httpx.TransportError as exc:
                if _is_tls_failure(exc):
                    raise RegistryError(
                        f"{self.host}: TLS certificate verification failed for {operation} "
                        f"({exc})",
                        hint="trust the registry's CA with KILN_CA_BUNDLE=/path/ca.pem (or "
                             "ca-bundle in [tool.kiln]); KILN_TLS_VERIFY=false only for tests",
                    ) from None
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                ratelimit = RateLimit.from_headers(resp.headers)
                if ratelimit is not None:
                    self.last_ratelimit = ratelimit
                status = resp.status_code
                if status == 429 or status >= 500:
                    last = f"HTTP {status} ({_error_detail(resp)})"
                    delay = _retry_after(resp.headers.get("Retry-After"))
                    if delay is not None and delay > self.max_retry_after:
                        raise RegistryTransientError(
                            f"{where}: {operation}: {last}; the registry asks to "
                            f"retry after {delay:.0f}s",
                            hint="wait and rerun (the operation is idempotent)",
                        )
                elif validate is not None and 200 <= status < 300:
                    try:
                        validate(resp)
                    except _Integrity as exc:
                        raise RegistryIntegrityError(
                            f"{where}: {exc}: it is corrupt, or a proxy rewrote them",
                            hint="kiln used none of these bytes and wrote nothing with them; "
                                 "reading the same registry again gives the same bytes, so "
                                 "check its storage (and any proxy or cache in front of it), "
                                 "then rerun",
                        ) from None
                    else:
                        return resp
                else:
                    return resp
            if attempt == self.max_attempts:
                break
            wait = delay if delay is not None else self._backoff_delay(attempt)
            if self._clock() + wait >= deadline:
                raise self._deadline_error(where, operation, started, attempts, last, wait)
            console.info(f"{where}: {operation}: {last}; retry {attempt}/"
                         f"{self.max_attempts - 1} in {wait:.1f}s")
            self._sleep(wait)
        if self._clock() >= deadline:
            raise self._deadline_error(where, operation, started, attempts, last, None)
        raise RegistryTransientError(
            f"{where}: {operation} failed after {attempts} attempts: {last}",
            hint="the registry is unreachable or overloaded; rerun later (kiln's registry "
                 "operations are idempotent)",
        )

    def _deadline_error(self, where: str, operation: str, started: float, attempts: int,
                        last: str, wait: float | None) -> RegistryTransientError:
        spent = self._clock() - started
        waiting = (f"; the next try would have been in {wait:.0f}s" if wait is not None else "")
        return RegistryTransientError(
            f"{where}: {operation}: gave up after {spent:.0f}s and {attempts} attempt"
            f"{'s' if attempts != 1 else ''}: the deadline for one registry operation "
            f"({self.deadline:.0f}s, setting registry-deadline) was reached; last: {last}"
            f"{waiting}",
            hint="the registry is not answering in time; rerun later, or raise "
                 "KILN_REGISTRY_DEADLINE (kiln's registry operations are idempotent)",
        )

    def _backoff_delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: half fixed, half random (never a thundering herd)."""
        ceiling = min(self.max_backoff, self.backoff * float(2 ** (attempt - 1)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    # -- authentication --------------------------------------------------------------------
    def _authorization(self, repo: str, needed: frozenset[str], operation: str,
                       deadline: float) -> dict[str, str]:
        """The Authorization header for a request, fetching a token up front once we know how."""
        if self._auth_scheme == "basic" and self.credentials is not None:
            return {"Authorization": _basic(self.credentials)}
        if self._auth_scheme == "bearer":
            token = self._tokens.get(repo)
            now = self._clock()
            if token is None or token.expires <= now or not needed <= token.actions:
                wanted = needed | (token.actions if token and token.expires > now else frozenset())
                token = self._fetch_token(repo, wanted, needed, operation, deadline)
                self._tokens[repo] = token
            if token.value:
                return {"Authorization": f"Bearer {token.value}"}
        return {}

    def _learn(self, challenge: Challenge, repo: str, needed: frozenset[str]) -> bool:
        """Take a 401 challenge into account; ``False`` if retrying cannot help."""
        if challenge.scheme == "basic":
            if (self.credentials is None or self._auth_scheme == "basic"
                    or self.credentials.is_identity_token):  # never a Basic password
                return False
            self._auth_scheme = "basic"
            return True
        if not challenge.realm:
            return False
        self._auth_scheme = "bearer"
        self._challenge = challenge
        previous = self._tokens.pop(repo, None)
        if previous is not None and needed <= previous.actions and previous.expires > 0:
            # A token that should have worked was refused: try once more with a fresh one.
            self._tokens[repo] = _Token(actions=previous.actions, expires=0.0)
        return True

    def _fetch_token(self, repo: str, wanted: frozenset[str], needed: frozenset[str],
                     operation: str, deadline: float) -> _Token:
        """A Bearer token for ``repo`` with ``wanted`` actions (falls back to ``needed``)."""
        challenge = self._challenge
        assert challenge is not None and challenge.realm
        self._check_realm(challenge.realm, repo, operation)
        for actions in (wanted, needed) if wanted != needed else (wanted,):
            params = {"scope": scope_for(repo, actions)}
            if challenge.service:
                params["service"] = challenge.service
            headers = {}
            if self.credentials is not None and self.credentials.is_identity_token:
                # An identity token is an OAuth2 refresh token: exchanged by POST, never sent
                # as a Basic password (distribution's token spec, "OAuth2 token" flow).
                form = {**params, "grant_type": "refresh_token", "client_id": "kiln",
                        "refresh_token": str(self.credentials.password)}
                headers["Content-Type"] = "application/x-www-form-urlencoded"
                resp = self._send("POST", challenge.realm, headers, urlencode(form).encode(),
                                  repo, "get a registry token", limit=SMALL_LIMIT,
                                  what="a token answer", deadline=deadline)
            else:
                if self.credentials is not None:
                    headers["Authorization"] = _basic(self.credentials)
                url = (challenge.realm + ("&" if "?" in challenge.realm else "?")
                       + urlencode(params))
                resp = self._send("GET", url, headers, None, repo, "get a registry token",
                                  limit=SMALL_LIMIT, what="a token answer", deadline=deadline)
            if resp.status_code in (401, 403) and actions != needed:
                continue
            if resp.status_code != 200:
                raise self._auth_error(resp.status_code, repo, operation, needed, resp,
                                       token_service=True)
            data = media.parse_json(resp.content, "token response")
            value = data.get("token") or data.get("access_token")
            if not isinstance(value, str) or not value:
                raise RegistryAuthError(f"{self.host}: token service answered without a token")
            console.register_secret(value)
            expires_in = data.get("expires_in")
            lifetime = float(expires_in) if isinstance(expires_in, int | float) else 60.0
            return _Token(value, actions, self._clock() + max(lifetime - 10.0, 5.0))
        raise AssertionError("unreachable")

    def _check_realm(self, realm: str, repo: str, operation: str) -> None:
        """Credentials go to a token service over TLS, or over plain HTTP only when the
        registry itself is plain HTTP (a loopback registry). A realm on another host over
        https is normal (Docker Hub, GitLab)."""
        scheme = urlsplit(realm).scheme.lower()
        if scheme not in {"http", "https"}:
            raise RegistryAuthError(
                f"registry {self.host}: its challenge names the token service {realm!r}, "
                "which is not an http(s) URL",
                hint="fix the registry's token realm (auth.token.realm)")
        if (scheme == "http" and self.scheme == "https" and self.credentials is not None):
            raise RegistryAuthError(
                f"registry {self.host} (https) names a plain-HTTP token service "
                f"{_origin(realm)[0]}://{_origin(realm)[1]} for '{operation}' on repository "
                f"{repo}: kiln does not send credentials in clear text",
                hint="configure the registry's token realm (auth.token.realm) with https://; "
                     "only a plain-HTTP registry (a loopback one) may use a plain-HTTP realm")

    def _auth_error(self, status: int, repo: str, operation: str, needed: frozenset[str],
                    resp: Answer, *, token_service: bool = False) -> RegistryAuthError:
        who = (f"as user {self.credentials.username!r} (credentials from "
               f"{self.credentials.source})" if self.credentials else "without credentials")
        what = "the token service refused" if token_service else "refused"
        reason = "unauthorized" if status == 401 else "forbidden"
        actions = ",".join(sorted(needed))
        return RegistryAuthError(
            f"registry {self.host} {what} '{operation}' on repository {repo} {who}: "
            f"HTTP {status} {reason} ({_error_detail(resp)})",
            hint=f"ask the maintainers of {self.host}/{repo} for {actions} access, or check "
                 "CI_REGISTRY_USER/CI_REGISTRY_PASSWORD or the auth file (REGISTRY_AUTH_FILE, "
                 "~/.docker/config.json)",
        )


def _basic(credentials: Credentials) -> str:
    raw = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _is_tls_failure(exc: BaseException) -> bool:
    """A certificate problem: retrying cannot help (unlike a reset or a timeout)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, float(when.timestamp()) - time.time())


def _error_detail(resp: Answer) -> str:
    """The registry's error codes and messages (never the request's headers)."""
    try:
        data = resp.json()
    except ValueError:
        text = resp.text.strip().splitlines()[0][:200] if resp.text.strip() else ""
        return text or resp.reason_phrase or "no detail"
    errors = data.get("errors") if isinstance(data, dict) else None
    if isinstance(errors, list) and errors:
        parts = []
        for err in errors[:3]:
            if isinstance(err, dict):
                parts.append(f"{err.get('code', '?')}: {err.get('message', '')}".strip())
        return "; ".join(parts)
    return resp.reason_phrase or "no detail"


def _next_link(header: str | None) -> str:
    """The ``rel="next"`` target of a Link header (relative or absolute), or ``""``."""
    if not header:
        return ""
    match = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', header)
    return match[1] if match else ""


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of ``url``, the unit credentials are bound to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def _path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


@contextmanager
def open_client(host: str, settings: Settings, **kwargs: Any) -> Iterator[RegistryClient]:
    """``with open_client(host, settings) as client:`` — closes the connection pool."""
    client = RegistryClient.from_settings(host, settings, **kwargs)
    try:
        yield client
    finally:
        client.close()
