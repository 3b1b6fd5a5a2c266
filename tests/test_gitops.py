"""deploy-production-tag against real git: a local bare repository as the remote, and a smart-HTTP
remote (git http-backend behind a Basic-auth check) proving the token travels only through
GIT_ASKPASS — never in argv, the remote URL, git config or output."""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import require_tool
from helpers.run import run_kiln
from kiln.errors import ConfigError
from kiln.gitops import TOKEN_VARIABLE, deploy_production_tag, strip_credentials

TOKEN = "glpat-Sup3rS3cretDeployT0ken"


def git(cwd: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@e")
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


@pytest.fixture
def repos(tmp_path: Path) -> tuple[Path, Path]:
    require_tool("git", "git")
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "--bare", "-q", str(bare)], check=True)
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    (work / "f").write_text("1")
    git(work, "add", "f")
    git(work, "commit", "-qm", "one")
    git(work, "remote", "add", "origin", str(bare))
    return work, bare


def test_strip_credentials() -> None:
    assert (strip_credentials("https://gitlab-ci-token:abc@gitlab.example/g/p.git")
            == "https://gitlab.example/g/p.git")
    assert strip_credentials("/srv/repo.git") == "/srv/repo.git"
    assert strip_credentials("git@host:g/p.git") == "git@host:g/p.git"


@pytest.mark.real
def test_force_moves_production_on_a_bare_remote(repos: tuple[Path, Path],
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    work, bare = repos
    env = {TOKEN_VARIABLE: TOKEN}
    first = deploy_production_tag(work, env=env)
    assert git(bare, "rev-parse", "production^{commit}") == first
    (work / "f").write_text("2")
    git(work, "commit", "-qam", "two")
    second = deploy_production_tag(work, env=env)
    assert second != first
    assert git(bare, "rev-parse", "production^{commit}") == second  # moved, by force
    assert git(work, "rev-parse", "production^{commit}") == second
    out, err = capfd.readouterr()
    assert TOKEN not in out + err


@pytest.mark.real
def test_task_dry_run_and_task_output(repos: tuple[Path, Path]) -> None:
    work, bare = repos
    plan = run_kiln(work, "deploy-production-tag", "--dry-run", env={TOKEN_VARIABLE: TOKEN})
    assert plan.returncode == 0, plan.stderr
    assert "git tag --force production" in plan.stdout
    with pytest.raises(subprocess.CalledProcessError):
        git(bare, "rev-parse", "production")
    done = run_kiln(work, "deploy-production-tag", env={TOKEN_VARIABLE: TOKEN})
    assert done.returncode == 0, done.stderr
    assert git(bare, "rev-parse", "production^{commit}") == git(work, "rev-parse", "HEAD")
    assert TOKEN not in plan.stdout + plan.stderr + done.stdout + done.stderr


class _GitHttp(BaseHTTPRequestHandler):
    """git smart HTTP (git http-backend as CGI) that demands Basic auth with the token."""

    root: Path
    seen_auth: list[str]

    def _serve(self) -> None:
        auth = self.headers.get("Authorization", "")
        self.seen_auth.append(auth)
        expected = "Basic " + base64.b64encode(f"deployer:{TOKEN}".encode()).decode()
        if auth != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = dict(os.environ, GIT_PROJECT_ROOT=str(self.root), GIT_HTTP_EXPORT_ALL="1",
                   PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD=self.command,
                   CONTENT_TYPE=self.headers.get("Content-Type", ""), REMOTE_USER="deployer",
                   CONTENT_LENGTH=str(length), GIT_HTTP_MAX_REQUEST_BUFFER="100M")
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        out = subprocess.run(["git", "http-backend"], input=body, capture_output=True,
                             env=env).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _serve  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_remote(repos: tuple[Path, Path]) -> Iterator[tuple[Path, Path, list[str]]]:
    work, bare = repos
    seen: list[str] = []
    handler = type("H", (_GitHttp,), {"root": bare.parent, "seen_auth": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    # As in GitLab CI: the checkout's remote carries the (read-only) job token in its URL.
    git(work, "remote", "set-url", "origin",
        f"http://gitlab-ci-token:job-token-xyz@127.0.0.1:{port}/{bare.name}")
    yield work, bare, seen
    server.shutdown()
    server.server_close()


@pytest.mark.real
def test_http_remote_gets_the_token_through_askpass(
        http_remote: tuple[Path, Path, list[str]]) -> None:
    work, bare, seen = http_remote
    proc = run_kiln(work, "deploy-production-tag",
                    env={TOKEN_VARIABLE: TOKEN, f"{TOKEN_VARIABLE}_USER": "deployer"})
    assert proc.returncode == 0, proc.stderr
    assert git(bare, "rev-parse", "production^{commit}") == git(work, "rev-parse", "HEAD")
    sent = [base64.b64decode(a.split()[1]).decode() for a in seen if a.startswith("Basic ")]
    assert f"deployer:{TOKEN}" in sent
    assert not any("job-token-xyz" in s for s in sent)  # the URL's job token was stripped
    assert TOKEN not in proc.stdout + proc.stderr
    assert TOKEN not in (work / ".git" / "config").read_text()


@pytest.mark.real
def test_http_remote_without_token_is_a_clear_error(
        http_remote: tuple[Path, Path, list[str]]) -> None:
    work, _, seen = http_remote
    with pytest.raises(ConfigError, match=f"{TOKEN_VARIABLE} is not set") as info:
        deploy_production_tag(work, env={})
    assert "job-token-xyz" not in str(info.value)
    assert seen == []
