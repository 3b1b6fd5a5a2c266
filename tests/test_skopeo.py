"""kiln.skopeo: the one ``skopeo copy`` command line, its runner and its failure classes.

Unit tests (no process). ``test_promote_mirror_and_seed_build_the_same_flags`` would have caught
the three hand-built command lines drifting apart (promote's ``--authfile`` and missing
``--src-tls-verify=true``, seed's missing ``--retry-times``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln import proc, promote, seed, skopeo
from kiln.errors import RegistryAuthError, RegistryError, RegistryTransientError
from kiln.registry.access import ToolAccess
from kiln.registry.reference import ImageRef
from kiln.settings import Settings

pytestmark = pytest.mark.usefixtures("no_subprocess")

A = "sha256:" + "a" * 64
PASSWORD = "skopeo-test-pw-77"


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    yield


def _settings(tmp_path: Path, env: dict[str, str] | None = None) -> Settings:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    return Settings.resolve(tmp_path, {}, {"CI_REGISTRY_USER": "ci",
                                           "CI_REGISTRY_PASSWORD": PASSWORD,
                                           "KILN_CA_BUNDLE": str(bundle), **(env or {})},
                            {"registry": "registry.example.com/group"})


def test_copy_argv_by_digest_all_arches_preserving_digests(tmp_path: Path) -> None:
    src = ImageRef("docker.io", "library/debian", None, A)
    dst = ImageRef("127.0.0.1:5000", "mirror/library/debian", "bookworm")
    tools = ToolAccess(Path("/t/auth.json"), None)
    args = skopeo.copy_argv(_settings(tmp_path), skopeo.docker_ref(src), skopeo.docker_ref(dst),
                            tools, retries=2, digestfile=Path("/t/d"))
    assert args[:5] == ["skopeo", "copy", "--all", "--preserve-digests", "--quiet"]
    assert "--retry-times=2" in args
    assert "--src-tls-verify=true" in args and "--dest-tls-verify=false" in args  # loopback
    assert args[args.index("--src-authfile") + 1] == "/t/auth.json"
    assert args[args.index("--dest-authfile") + 1] == "/t/auth.json"
    assert args[args.index("--digestfile") + 1] == "/t/d"
    assert args[-2:] == [f"docker://docker.io/library/debian@{A}",
                         "docker://127.0.0.1:5000/mirror/library/debian:bookworm"]
    assert "--src-cert-dir" not in args
    with pytest.raises(ValueError):
        skopeo.docker_ref(ImageRef("docker.io", "x"))


def test_dir_source_gets_only_destination_flags(tmp_path: Path) -> None:
    tools = ToolAccess(Path("/t/auth.json"), Path("/t/certs"))
    args = skopeo.copy_argv(_settings(tmp_path), "dir:/cache/x", "docker://quay.io/o/x:1", tools)
    assert not any(a.startswith("--src-") for a in args)
    assert "--dest-tls-verify=true" in args
    assert args[args.index("--dest-cert-dir") + 1] == "/t/certs"


class Captured:
    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    def __call__(self, argv: list[str], what: str) -> None:
        self.argvs.append(argv)


def _flags(argv: list[str], sides: tuple[str, ...] = ("src", "dest")) -> list[str]:
    """The options of an argv as ``--flag=value``, temporary paths replaced, for ``sides``."""
    words = argv[2:-2]
    options = []
    i = 0
    while i < len(words):
        option = words[i]
        if "=" not in option and i + 1 < len(words) and not words[i + 1].startswith("--"):
            option = f"{option}={words[i + 1]}"
            i += 1
        i += 1
        side = re.match(r"--(src|dest)-", option)
        if (side is None or side[1] in sides) and not option.startswith("--digestfile"):
            options.append(re.sub(r"/tmp/kiln-[^/]+", "<tmp>", option))
    return options


def test_promote_mirror_and_seed_build_the_same_flags(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    captured = Captured()
    monkeypatch.setattr(skopeo, "run_copy", captured)
    monkeypatch.setattr(proc, "which", lambda tool: tool)
    settings = _settings(tmp_path)
    source, dest = "127.0.0.1:5000", "registry.example.com"
    promote.copy_between(settings, promote.Destination(source, "app"), A,
                         promote.Destination(dest, "group/app"), "g-1", dry_run=False,
                         log=lambda op: None)
    with skopeo.copier(settings, {source, dest}) as copier:
        copier.copy(ImageRef(source, "app", None, A), ImageRef(dest, "group/app", "g-1"))
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "manifest.json").write_text("{}")
    seed._copy_to_registry(seed._Context(settings, dest, tmp_path), layout,
                           f"{dest}/mirror/app:g-1")
    promoted, mirrored, seeded = captured.argvs
    assert _flags(promoted) == _flags(mirrored)
    assert promoted[-2:] == mirrored[-2:]
    assert _flags(seeded) == _flags(promoted, sides=("dest",))
    for argv in captured.argvs:
        assert "--dest-tls-verify=true" in argv and "--dest-authfile" in argv
        assert "--dest-cert-dir" in argv and not any(PASSWORD in a for a in argv)
    assert "--src-tls-verify=false" in promoted  # the loopback source: plain HTTP


def test_dry_run_plan_is_the_real_argv_with_placeholders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    captured = Captured()
    monkeypatch.setattr(skopeo, "run_copy", captured)
    monkeypatch.setattr(proc, "which", lambda tool: tool)
    settings = _settings(tmp_path)
    hosts = {"127.0.0.1:5000", "registry.example.com"}
    src, dst = "docker://127.0.0.1:5000/app@" + A, "docker://registry.example.com/group/app:1"
    planned = skopeo.planned_copy_argv(settings, hosts, src, dst)
    with skopeo.copier(settings, hosts) as copier:
        copier.copy_to(src, dst, "test")
    real = captured.argvs[0]
    assert len(planned) == len(real)
    normalised = [re.sub(r"/tmp/kiln-[^ ]*", "<file>", a) for a in real]
    placeholders = [re.sub(r"^<.*>$", "<file>", a) for a in planned]
    assert normalised == placeholders


# -- failures ----------------------------------------------------------------------------------

def test_classify_skopeo_failures() -> None:
    assert skopeo.classify_failure("reading manifest: toomanyrequests: You have reached") is \
        skopeo.CopyRateLimited
    assert skopeo.is_rate_limited("Status 429 Too Many Requests")
    assert skopeo.classify_failure("unauthorized: authentication required") is RegistryAuthError
    assert skopeo.classify_failure("manifest unknown") is RegistryError
    assert skopeo.classify_failure("dial tcp 127.0.0.1:1: connect: connection refused") is \
        RegistryTransientError


def test_run_copy_retries_once_on_the_hidden_cause_then_classifies(
        monkeypatch: pytest.MonkeyPatch) -> None:
    output = ("Error: copying: preserve digests requested, but manifest must be converted")
    calls: list[list[str]] = []

    def run(argv: list[str], **kwargs: object) -> proc.Result:
        calls.append(argv)
        return proc.Result(tuple(argv), 1, "", output)

    monkeypatch.setattr(proc, "run", run)
    with pytest.raises(RegistryError) as info:
        skopeo.run_copy(["skopeo", "copy", "a", "b"], "a -> b")
    assert len(calls) == 2
    assert "skopeo copy a -> b failed (exit 1)" in info.value.message
    assert info.value.hint is not None and "manifest type" in info.value.hint
