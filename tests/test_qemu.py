"""binfmt checks and registration: parsing and decisions against a fake binfmt_misc folder, then
the real kernel (registration needs root; we are root on the CI machine kind)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import REPO_ROOT, require_tool, skip_or_fail
from helpers.run import run_kiln
from kiln import qemu
from kiln.errors import InputError, ToolMissingError
from test_seed import SEED_CACHE

AARCH64_CONF = (":qemu-aarch64:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00"
                "\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00"
                "\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:"
                "/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF")
ENABLED = """enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: POF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""


@pytest.fixture
def fake(tmp_path: Path) -> dict[str, Path]:
    dirs = {name: tmp_path / name for name in ("binfmt", "conf", "bin")}
    for path in dirs.values():
        path.mkdir()
    (dirs["binfmt"] / "register").write_text("")
    (dirs["conf"] / "qemu-aarch64.conf").write_text("# comment\n" + AARCH64_CONF + "\n")
    (dirs["bin"] / "qemu-aarch64-static").write_text("")
    return dirs


def check(fake: dict[str, Path], arch: str = "arm64") -> None:
    qemu.check_binfmt(arch, binfmt_dir=fake["binfmt"], bin_dir=fake["bin"], native="amd64")


@pytest.mark.usefixtures("no_subprocess")
class TestOffline:
    def test_handler_names_follow_qemu(self) -> None:
        assert qemu.handler_name("aarch64") == "qemu-aarch64"
        assert qemu.handler_name("amd64") == "qemu-x86_64"
        assert qemu.handler_name("ppc64el") == "qemu-ppc64le"
        with pytest.raises(InputError, match="unsupported architecture"):
            qemu.handler_name("mips")

    def test_parse_entry(self) -> None:
        entry = qemu.parse_entry("qemu-aarch64", ENABLED)
        assert entry.enabled and entry.fix_binary
        assert entry.interpreter == "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"
        disabled = qemu.parse_entry("x", "disabled\ninterpreter /q\nflags: OC\n")
        assert not disabled.enabled and not disabled.fix_binary

    def test_host_arch_needs_nothing(self, fake: dict[str, Path]) -> None:
        qemu.check_binfmt("x86_64", binfmt_dir=fake["binfmt"], bin_dir=fake["bin"],
                          native="amd64")

    def test_registered_handler_passes(self, fake: dict[str, Path]) -> None:
        (fake["binfmt"] / "qemu-aarch64").write_text(ENABLED)
        check(fake)

    def test_missing_qemu_says_which_package(self, fake: dict[str, Path]) -> None:
        (fake["bin"] / "qemu-aarch64-static").unlink()
        with pytest.raises(ToolMissingError, match="qemu-user-static is not installed") as err:
            check(fake)
        assert err.value.hint is not None and "apt-get install qemu-user-static" in err.value.hint
        assert err.value.exit_code == 6

    def test_unregistered_handler_says_how_to_fix(self, fake: dict[str, Path]) -> None:
        with pytest.raises(ToolMissingError, match="no binfmt handler qemu-aarch64") as err:
            check(fake)
        assert err.value.hint == ("run `invoke binfmt-register` as root "
                                  "(or `apt-get install binfmt-support`)")

    def test_disabled_or_not_fix_binary_is_refused(self, fake: dict[str, Path]) -> None:
        (fake["binfmt"] / "qemu-aarch64").write_text(ENABLED.replace("enabled", "disabled"))
        with pytest.raises(ToolMissingError, match="is disabled"):
            check(fake)
        (fake["binfmt"] / "qemu-aarch64").write_text(ENABLED.replace("POF", "OC"))
        with pytest.raises(ToolMissingError, match="lacks the F"):
            check(fake)

    def test_register_writes_the_debian_line(self, fake: dict[str, Path]) -> None:
        done = qemu.register_binfmt(["aarch64", "amd64"], binfmt_dir=fake["binfmt"],
                                    conf_dir=fake["conf"], bin_dir=fake["bin"], native="amd64",
                                    mount=False, verify=False)
        assert done == ["qemu-aarch64"]
        assert (fake["binfmt"] / "register").read_text() == AARCH64_CONF

    def test_register_skips_what_is_registered(self, fake: dict[str, Path]) -> None:
        (fake["binfmt"] / "qemu-aarch64").write_text(ENABLED)
        assert qemu.register_binfmt(["arm64"], binfmt_dir=fake["binfmt"], conf_dir=fake["conf"],
                                    bin_dir=fake["bin"], native="amd64", mount=False) == []
        assert (fake["binfmt"] / "register").read_text() == ""

    def test_register_replaces_an_entry_without_fix_binary(self, fake: dict[str, Path]) -> None:
        (fake["binfmt"] / "qemu-aarch64").write_text(ENABLED.replace("POF", "OC"))
        qemu.register_binfmt(["arm64"], binfmt_dir=fake["binfmt"], conf_dir=fake["conf"],
                             bin_dir=fake["bin"], native="amd64", mount=False, verify=False)
        assert (fake["binfmt"] / "qemu-aarch64").read_text() == "-1"
        assert (fake["binfmt"] / "register").read_text() == AARCH64_CONF

    def test_register_without_conf_file(self, fake: dict[str, Path]) -> None:
        (fake["bin"] / "qemu-s390x-static").write_text("")
        with pytest.raises(ToolMissingError, match="qemu-s390x.conf not found"):
            qemu.register_binfmt(["s390x"], binfmt_dir=fake["binfmt"], conf_dir=fake["conf"],
                                 bin_dir=fake["bin"], native="amd64", mount=False)

    def test_unmounted_binfmt_misc_without_mount(self, fake: dict[str, Path]) -> None:
        (fake["binfmt"] / "register").unlink()
        with pytest.raises(ToolMissingError, match="not mounted|not found"):
            qemu.register_binfmt(["arm64"], binfmt_dir=fake["binfmt"], conf_dir=fake["conf"],
                                 bin_dir=fake["bin"], native="amd64", mount=False)


@pytest.mark.real
def test_real_registration_makes_arm64_runnable(binfmt_arm64: None) -> None:
    """After the session fixture registered arm64, the kernel shows an enabled F handler and an
    arm64 static binary runs (through qemu)."""
    qemu.check_binfmt("arm64")
    entry = qemu.read_entry("arm64")
    assert entry is not None and entry.enabled and entry.fix_binary
    # Registering again changes nothing.
    assert qemu.register_binfmt(["arm64"]) == []


@pytest.fixture(scope="session")
def binfmt_arm64() -> None:
    require_tool("qemu-aarch64-static", "qemu-user-static")
    if os.geteuid() != 0 and qemu.read_entry("arm64") is None:
        skip_or_fail("registering binfmt handlers needs root")
    qemu.register_binfmt(["arm64"])


# -- foreign arches beyond arm64: clear errors (unit), arm64 for real ------------------------

@pytest.mark.usefixtures("no_subprocess")
@pytest.mark.parametrize(("arch", "handler"), [("ppc64le", "qemu-ppc64le"),
                                               ("s390x", "qemu-s390x")])
def test_other_foreign_arches_say_what_is_missing(tmp_path: Path, arch: str, handler: str) -> None:
    """ppc64le and s390x are built the same way as arm64 when qemu allows; without qemu or a
    registered handler the error names the architecture, the missing piece and the fix."""
    binfmt, bin_dir = tmp_path / "binfmt", tmp_path / "bin"
    binfmt.mkdir()
    bin_dir.mkdir()
    with pytest.raises(ToolMissingError, match=f"cannot build for {arch}: .*{handler}-static "
                       "not found") as err:
        qemu.check_binfmt(arch, binfmt_dir=binfmt, bin_dir=bin_dir, native="amd64")
    assert err.value.hint is not None and "apt-get install qemu-user-static" in err.value.hint
    (bin_dir / f"{handler}-static").write_text("")
    with pytest.raises(ToolMissingError, match=f"no binfmt handler {handler} is registered"):
        qemu.check_binfmt(arch, binfmt_dir=binfmt, bin_dir=bin_dir, native="amd64")


@pytest.mark.real
def test_backend_for_arm64_offline_and_its_self_test_under_qemu(
        binfmt_arm64: None, buildah_storage: dict[str, Path], tmp_path: Path) -> None:
    """``invoke build-arch --image backend --arch arm64`` in the local flow (embedded registry,
    offline seed: Debian arm64 made by debootstrap's foreign mode under qemu, cached), then
    ``invoke run --image backend --arch arm64 -- --self-test``: every RUN step and the service
    itself ran as aarch64 code under qemu."""
    for tool, package in (("buildah", "buildah"), ("skopeo", "skopeo"),
                          ("debootstrap", "debootstrap"), ("docker-registry", "docker-registry")):
        require_tool(tool, package)
    if os.geteuid() != 0:
        skip_or_fail("the offline Debian image needs root (debootstrap)")
    state = tmp_path / "state"
    state.mkdir()
    SEED_CACHE.mkdir(parents=True, exist_ok=True)
    (state / "seed").symlink_to(SEED_CACHE)  # the one debootstrap per arch is shared
    env = {"KILN_STATE_DIR": str(state), "KILN_STORAGE_ROOT": str(buildah_storage["root"]),
           "KILN_STORAGE_RUNROOT": str(buildah_storage["runroot"]),
           "STORAGE_DRIVER": "overlay"}
    try:
        built = run_kiln(REPO_ROOT, "build-arch", "--image", "backend", "--arch", "arm64",
                         env=env, timeout=2400)
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        assert "backend:p-local-arm64" in built.stderr + built.stdout
        ran = run_kiln(REPO_ROOT, "run", "--image", "backend", "--arch", "arm64", "--",
                       "--self-test", env=env)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.strip().startswith("self-test ok: backend 0.1.0 on Python 3.11")
        assert ran.stdout.strip().endswith("(aarch64)")
    finally:
        run_kiln(REPO_ROOT, "registry-stop", env=env)
