"""``deploy-production-tag``: move the git tag ``production`` to the current commit and push it.

The push uses ``GITLAB_JOB_DEPLOY_PRODUCTION_ACCESS_TOKEN`` (a project access token with
``write_repository``): CI's own job token cannot push. The token never reaches argv, the remote
URL, git's config or any output: for an https remote git asks a throwaway ``GIT_ASKPASS``
helper, which reads it from the environment of the git process only. Credentials already in the
remote URL (GitLab's checkout embeds ``gitlab-ci-token:<job token>``) are stripped first. For a
local or ssh remote the token is not used.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from kiln import console, proc
from kiln.errors import ConfigError, KilnError, RegistryAuthError, RegistryTransientError

TOKEN_VARIABLE = "GITLAB_JOB_DEPLOY_PRODUCTION_ACCESS_TOKEN"
USER_VARIABLE = "GITLAB_JOB_DEPLOY_PRODUCTION_ACCESS_TOKEN_USER"
TAG = "production"

_ASKPASS = """#!/bin/sh
case "$1" in
  Username*|username*) printf '%s\\n' "$KILN_GIT_USERNAME" ;;
  *) printf '%s\\n' "$KILN_GIT_PASSWORD" ;;
esac
"""


class GitError(KilnError):
    exit_code = 2


def strip_credentials(url: str) -> str:
    """``https://user:secret@host/path`` -> ``https://host/path`` (pure)."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def is_http_remote(url: str) -> bool:
    return urlsplit(url).scheme in {"http", "https"}


@contextmanager
def _askpass(username: str, token: str) -> Iterator[dict[str, str]]:
    """Environment for git that answers its credential prompts from a private helper."""
    with tempfile.TemporaryDirectory(prefix="kiln-git-") as tmp:
        helper = Path(tmp) / "askpass.sh"
        helper.write_text(_ASKPASS, encoding="utf-8")
        helper.chmod(stat.S_IRWXU)
        env = dict(os.environ)
        env.update({
            "GIT_ASKPASS": str(helper),
            "KILN_GIT_USERNAME": username,
            "KILN_GIT_PASSWORD": token,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
        })
        # No credential helper may store the token.
        env["GIT_CONFIG_COUNT"] = "1"
        env["GIT_CONFIG_KEY_0"] = "credential.helper"
        env["GIT_CONFIG_VALUE_0"] = ""
        yield env


_GIT_AUTH = re.compile(r"authentication failed|could not read (username|password)|"
                       r"permission denied|access denied|\b40[13]\b|not allowed to push|"
                       r"protected tag", re.IGNORECASE)
_GIT_TRANSIENT = re.compile(r"could not resolve host|connection refused|timed out|"
                            r"connection reset|\b50[234]\b|early eof|rpc failed|"
                            r"the remote end hung up", re.IGNORECASE)


def classify_git_failure(output: str) -> type[KilnError]:
    """The exit-code class of a failed git command: refused credentials (3), an unreachable or
    failing server (4), anything else (2) — pure, from git's output."""
    if _GIT_AUTH.search(output):
        return RegistryAuthError
    if _GIT_TRANSIENT.search(output):
        return RegistryTransientError
    return GitError


def _git(repo: Path, *args: str, env: dict[str, str] | None = None, what: str) -> str:
    result = proc.run(["git", "-C", str(repo), *args], error=GitError, what=what, env=env,
                      check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).rstrip()
        tail = "\n".join("    " + line for line in output.splitlines()[-20:])
        raise classify_git_failure(output)(
            f"{what} failed (exit {result.returncode}): {console.mask(' '.join(result.args))}"
            + (f"\n  last output:\n{console.mask(tail)}" if tail else ""))
    return result.stdout.strip()


def deploy_production_tag(
    project_dir: Path,
    *,
    remote: str = "origin",
    tag: str = TAG,
    env: dict[str, str] | None = None,
    dry_run: bool = False,
) -> str:
    """Force-move ``tag`` to HEAD and force-push it to ``remote``; returns the commit id."""
    environ = os.environ if env is None else env
    token = environ.get(TOKEN_VARIABLE, "").strip()
    console.register_secret(token)
    sha = _git(project_dir, "rev-parse", "--verify", "HEAD^{commit}", what="git rev-parse HEAD")
    url = _git(project_dir, "remote", "get-url", remote, what=f"git remote get-url {remote}")
    push_to = strip_credentials(url) if is_http_remote(url) else remote
    if is_http_remote(url) and not token:
        raise ConfigError(
            f"{TOKEN_VARIABLE} is not set: cannot push the {tag!r} tag to {strip_credentials(url)}",
            hint="create a project access token with write_repository and add it as a masked CI "
                 f"variable named {TOKEN_VARIABLE}",
        )
    refspec = f"refs/tags/{tag}:refs/tags/{tag}"
    if dry_run:
        console.plan(f"git tag --force {tag} {sha}")
        console.plan(f"git push --force {strip_credentials(push_to)} {refspec}")
        return sha
    _git(project_dir, "tag", "--force", tag, sha, what=f"git tag {tag}")
    if is_http_remote(url):
        username = environ.get(USER_VARIABLE, "").strip() or "oauth2"
        with _askpass(username, token) as git_env:
            _git(project_dir, "push", "--force", push_to, refspec, env=git_env,
                 what=f"git push {tag}")
    else:
        _git(project_dir, "push", "--force", push_to, refspec, what=f"git push {tag}")
    return sha
