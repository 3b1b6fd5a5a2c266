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
* Retries with exponential backoff and jitter on connection errors, 5xx and 429 (``Retry-After``
  honoured); never on other 4xx. A 401/403 is a :class:`RegistryAuthError` naming the registry,
  the repository and the operation.
* Secrets never appear in messages or ``repr``: passwords are masked, tokens are never printed.
* The HTTP transport is injectable (``transport=httpx.MockTransport(...)``), so retries and the
  authentication flows are unit-tested without a server.
"""

from __future__ import annotations

import base64
import email.utils
import random
import re
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urljoin

import httpx

from kiln import console
from kiln.errors import RegistryAuthError, RegistryError, RegistryTransientError
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
@dataclass
class _Token:
    value: str = ""
    actions: frozenset[str] = frozenset()
    expires: float = 0.0

    def __repr__(self) -> str:
        return f"_Token(actions={sorted(self.actions)}, expires={self.expires:.0f})"


class _Retry(Exception):
    """A response that is worth retrying (bad digest, ...)."""


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
        sleep: Callable[[float], None] = time.sleep,
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
        self._sleep = sleep
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
            follow_redirects=True,
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
        """The manifest (list) ``repo:ref``, byte for byte; :class:`RegistryError` if absent."""

        def check(resp: httpx.Response) -> None:
            computed = media.digest_of(resp.content)
            expected = ref if DIGEST_RE.match(ref) else resp.headers.get("Docker-Content-Digest")
            if expected and expected.startswith("sha256:") and expected != computed:
                raise _Retry(f"manifest body does not match digest {expected} (got {computed})")

        resp = self._request("GET", repo, f"manifests/{ref}", f"read manifest {ref}",
                             headers={"Accept": media.ACCEPT}, ok=(200,), validate=check)
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
        """Every tag of ``repo`` (follows pagination); empty if the repository does not exist."""
        tags: list[str] = []
        path = "tags/list?n=1000"
        while path:
            resp = self._request("GET", repo, path, "list tags", ok=(200,), missing=(404,))
            if resp is None:
                return tags
            data = media.parse_json(resp.content, f"{self.host}/{repo} tag list")
            tags.extend(str(t) for t in (data.get("tags") or []))
            path = _next_link(resp.headers.get("Link"), repo)
        return tags

    # -- blobs -----------------------------------------------------------------------------
    def blob_exists(self, repo: str, digest: str) -> bool:
        resp = self._request("HEAD", repo, f"blobs/{digest}", f"check blob {digest}",
                             ok=(200,), missing=(404,))
        return resp is not None

    def get_blob(self, repo: str, digest: str) -> bytes:
        """A (small) blob, checked against its digest — for image configs, not layers."""

        def check(resp: httpx.Response) -> None:
            if media.digest_of(resp.content) != digest:
                raise _Retry(f"blob body does not match {digest}")

        resp = self._request("GET", repo, f"blobs/{digest}", f"read blob {digest}", ok=(200,),
                             validate=check)
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
        url = urljoin(self._base(), location)
        url += ("&" if "?" in url else "?") + urlencode({"digest": digest})
        try:
            self._request("PUT", repo, url, f"upload blob {digest}", ok=(201, 204),
                          headers={"Content-Type": "application/octet-stream"}, content=data)
        except RegistryError:
            # A retried PUT whose first attempt completed finds its upload session gone.
            if not self.blob_exists(repo, digest):
                raise
        return digest

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
        validate: Callable[[httpx.Response], None] | None = None,
    ) -> httpx.Response | None:
        """Send with auth and retries; ``None`` for a status in ``missing``; errors otherwise."""
        url = self._url(repo, path)
        needed = actions_for(method)
        resp: httpx.Response | None = None
        for auth_round in range(2):
            all_headers = dict(headers or {})
            all_headers.update(self._authorization(repo, needed, operation))
            resp = self._send(method, url, all_headers, content, repo, operation, validate)
            if resp.status_code != 401 or auth_round == 1:
                break
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

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        content: bytes | None,
        repo: str,
        operation: str,
        validate: Callable[[httpx.Response], None] | None = None,
    ) -> httpx.Response:
        """One logical request with retries on connection errors, 5xx, 429 and bad bodies."""
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            delay: float | None = None
            try:
                self.request_count += 1
                resp = self._http.request(method, url, headers=headers, content=content)
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
                            f"{self.host}/{repo}: {operation}: {last}; the registry asks to "
                            f"retry after {delay:.0f}s",
                            hint="wait and rerun (the operation is idempotent)",
                        )
                elif validate is not None and 200 <= status < 300:
                    try:
                        validate(resp)
                    except _Retry as exc:
                        last = str(exc)
                    else:
                        return resp
                else:
                    return resp
            if attempt == self.max_attempts:
                break
            wait = delay if delay is not None else self._backoff_delay(attempt)
            console.info(f"{self.host}/{repo}: {operation}: {last}; retry {attempt}/"
                         f"{self.max_attempts - 1} in {wait:.1f}s")
            self._sleep(wait)
        raise RegistryTransientError(
            f"{self.host}/{repo}: {operation} failed after {self.max_attempts} attempts: {last}",
            hint="the registry is unreachable or overloaded; rerun later (kiln's registry "
                 "operations are idempotent)",
        )

    def _backoff_delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: half fixed, half random (never a thundering herd)."""
        ceiling = min(self.max_backoff, self.backoff * float(2 ** (attempt - 1)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    # -- authentication --------------------------------------------------------------------
    def _authorization(self, repo: str, needed: frozenset[str], operation: str) -> dict[str, str]:
        """The Authorization header for a request, fetching a token up front once we know how."""
        if self._auth_scheme == "basic" and self.credentials is not None:
            return {"Authorization": _basic(self.credentials)}
        if self._auth_scheme == "bearer":
            token = self._tokens.get(repo)
            now = time.monotonic()
            if token is None or token.expires <= now or not needed <= token.actions:
                wanted = needed | (token.actions if token and token.expires > now else frozenset())
                token = self._fetch_token(repo, wanted, needed, operation)
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
                     operation: str) -> _Token:
        """A Bearer token for ``repo`` with ``wanted`` actions (falls back to ``needed``)."""
        challenge = self._challenge
        assert challenge is not None and challenge.realm
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
                                  repo, "get a registry token")
            else:
                if self.credentials is not None:
                    headers["Authorization"] = _basic(self.credentials)
                url = (challenge.realm + ("&" if "?" in challenge.realm else "?")
                       + urlencode(params))
                resp = self._send("GET", url, headers, None, repo, "get a registry token")
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
            return _Token(value, actions, time.monotonic() + max(lifetime - 10.0, 5.0))
        raise AssertionError("unreachable")

    def _auth_error(self, status: int, repo: str, operation: str, needed: frozenset[str],
                    resp: httpx.Response, *, token_service: bool = False) -> RegistryAuthError:
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


def _error_detail(resp: httpx.Response) -> str:
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


def _next_link(header: str | None, repo: str) -> str:
    """The ``rel="next"`` target of a Link header, as a path below ``/v2/<repo>/``."""
    if not header:
        return ""
    match = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', header)
    if not match:
        return ""
    target = match[1]
    prefix = f"/v2/{repo}/"
    if target.startswith(prefix):
        return target[len(prefix):]
    return target


@contextmanager
def open_client(host: str, settings: Settings, **kwargs: Any) -> Iterator[RegistryClient]:
    """``with open_client(host, settings) as client:`` — closes the connection pool."""
    client = RegistryClient.from_settings(host, settings, **kwargs)
    try:
        yield client
    finally:
        client.close()
