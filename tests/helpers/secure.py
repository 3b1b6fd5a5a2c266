"""Secured registries for the auth tests: a self-signed CA and server certificate, an htpasswd
file (bcrypt), and a small Bearer token service issuing JWTs the registry verifies (RS256, the
signing certificate in ``x5c``, trusted through the registry's ``rootcertbundle``)."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

# The test extra installs cryptography (pip install -e '.[test]'): no skip, anywhere.
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from conftest import require_tool


@dataclass
class Pki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    signing_cert: Path
    signing_key: Any
    signing_der: bytes


def _name(cn: str) -> Any:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost signed by it, a token signing cert."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (x509.CertificateBuilder().subject_name(_name("kiln test CA")).issuer_name(_name("kiln test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([
                  x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                  critical=False)
              .sign(ca_key, hashes.SHA256()))
    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signing = (x509.CertificateBuilder().subject_name(_name("kiln token signer"))
               .issuer_name(_name("kiln token signer")).public_key(signing_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .sign(signing_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    paths = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                directory / "signing.pem", signing_key, signing.public_bytes(serialization.Encoding.DER))
    paths.ca_cert.write_bytes(ca.public_bytes(pem))
    paths.server_cert.write_bytes(server.public_bytes(pem))
    paths.server_key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                                   serialization.NoEncryption()))
    paths.signing_cert.write_bytes(signing.public_bytes(pem))
    return paths


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash for docker-registry's htpasswd, from ``htpasswd -B`` (apache2-utils, which
    ci/setup-host.sh installs): Python's ``crypt`` module is gone in 3.13."""
    htpasswd = require_tool("htpasswd", "apache2-utils")
    done = subprocess.run([htpasswd, "-niBC", "5", "kiln"], input=password, capture_output=True,
                          text=True, check=True)
    return done.stdout.strip().partition(":")[2]


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    path.write_text("".join(f"{user}:{bcrypt_hash(pw)}\n" for user, pw in users.items()))
    return path


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenService:
    """A docker-registry token service: Basic-authenticated GET /token?service=&scope=."""

    pki: Pki
    users: dict[str, tuple[str, set[str]]]  # user -> (password, allowed actions)
    service: str = "kiln-test-registry"
    issuer: str = "kiln-test-issuer"
    anonymous_actions: set[str] = field(default_factory=set)
    requests: list[dict[str, Any]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def realm(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def registry_auth(self) -> dict[str, Any]:
        return {"token": {"realm": self.realm, "service": self.service, "issuer": self.issuer,
                          "rootcertbundle": str(self.pki.signing_cert)}}

    def _sign(self, subject: str, access: list[dict[str, Any]]) -> str:
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self.pki.signing_der).decode()]}
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.pki.signing_key.sign(signing_input.encode(), padding.PKCS1v15(),
                                              hashes.SHA256())
        token = f"{signing_input}.{_b64url(signature)}"
        self.issued.append(token)
        return token

    def handle(self, path: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        query = parse_qs(urlsplit(path).query)
        user = None
        allowed = self.anonymous_actions
        if authorization and authorization.startswith("Basic "):
            name, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            if name not in self.users or self.users[name][0] != password:
                self.requests.append({"user": name, "scope": query.get("scope"), "status": 401})
                return 401, {"details": "bad credentials"}
            user, allowed = name, self.users[name][1]
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted = [a for a in actions.split(",") if a in allowed]
            access.append({"type": kind, "name": name, "actions": granted})
        self.requests.append({"user": user, "scope": query.get("scope"), "status": 200})
        return 200, {"token": self._sign(user or "anonymous", access), "expires_in": 300}

    def start(self) -> TokenService:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                status, body = service.handle(self.path, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def tls_http_config(pki: Pki) -> dict[str, Any]:
    return {"addr": "127.0.0.1:0", "secret": "kiln-test",
            "tls": {"certificate": str(pki.server_cert), "key": str(pki.server_key)}}


def cert_dir(pki: Pki, directory: Path) -> Path:
    """A directory skopeo's ``--cert-dir`` understands (``*.crt`` CA files)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.crt").write_bytes(pki.ca_cert.read_bytes())
    return directory


def iter_outputs(*procs: Any) -> Iterator[str]:
    for proc in procs:
        yield proc.stdout
        yield proc.stderr
