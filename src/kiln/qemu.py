"""Foreign-architecture builds: is the kernel set up to run another architecture's binaries?

buildah runs a foreign image's RUN steps through the kernel's ``binfmt_misc``: an ELF of another
architecture is handed to ``qemu-<name>-static``. With ``--isolation chroot`` the interpreter
must be registered with the ``F`` (fix-binary) flag, because the chroot does not contain it;
Debian's ``qemu-user-static`` ships such entries in ``/usr/lib/binfmt.d/qemu-<name>.conf``.

Checking is read-only and needs no privileges; registering needs root (it may mount
``binfmt_misc`` and writes to its ``register`` file). Pure parsing lives in small functions so
it is unit-testable; every path is a parameter so tests can point them at a temporary folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kiln import proc
from kiln.arch import QEMU_NAMES, host_arch, normalize_arch
from kiln.errors import ToolMissingError

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF_DIR = Path("/usr/lib/binfmt.d")
QEMU_BIN_DIR = Path("/usr/bin")

REGISTER_HINT = "run `invoke binfmt-register` as root (or `apt-get install binfmt-support`)"
INSTALL_HINT = "apt-get install qemu-user-static"


@dataclass(frozen=True)
class BinfmtEntry:
    """One registered handler, as ``/proc/sys/fs/binfmt_misc/<name>`` shows it."""

    name: str
    enabled: bool
    interpreter: str | None
    flags: str

    @property
    def fix_binary(self) -> bool:
        """``F``: the kernel opened the interpreter at registration (works inside a chroot)."""
        return "F" in self.flags


def handler_name(arch: str) -> str:
    """``arm64`` -> ``qemu-aarch64`` (the name of the binfmt entry and of its .conf file)."""
    return "qemu-" + QEMU_NAMES[normalize_arch(arch)]


def parse_entry(name: str, text: str) -> BinfmtEntry:
    """Parse the text of a ``binfmt_misc/<name>`` file (``enabled``, ``interpreter``, ``flags``)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    enabled = bool(lines) and lines[0] == "enabled"
    interpreter = None
    flags = ""
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        if key == "interpreter":
            interpreter = value.strip()
        elif key == "flags:":
            flags = value.strip()
    return BinfmtEntry(name, enabled, interpreter, flags)


def read_entry(arch: str, binfmt_dir: Path | None = None) -> BinfmtEntry | None:
    """The registered handler for ``arch``, or ``None`` when there is none (or no binfmt_misc)."""
    name = handler_name(arch)
    binfmt_dir = binfmt_dir or BINFMT_DIR
    try:
        text = (binfmt_dir / name).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return parse_entry(name, text)


def qemu_binary(arch: str, bin_dir: Path | None = None) -> Path:
    return (bin_dir or QEMU_BIN_DIR) / f"{handler_name(arch)}-static"


def check_binfmt(arch: str, *, binfmt_dir: Path | None = None, bin_dir: Path | None = None,
                 native: str | None = None) -> None:
    """Raise :class:`ToolMissingError` unless RUN steps of ``arch`` images can run here.

    The host architecture needs nothing. Otherwise qemu-user-static must be installed and its
    handler registered, enabled and fix-binary (``F``), or RUN steps fail in a chroot with
    "exec format error" / "no such file or directory" deep inside the build.
    """
    arch = normalize_arch(arch)
    if arch == (native or host_arch()):
        return
    binfmt_dir = binfmt_dir or BINFMT_DIR
    binary = qemu_binary(arch, bin_dir)
    if not binary.exists():
        raise ToolMissingError(
            f"cannot build for {arch}: {binary} not found (qemu-user-static is not installed)",
            hint=INSTALL_HINT + f", then {REGISTER_HINT}",
        )
    entry = read_entry(arch, binfmt_dir)
    if entry is None:
        raise ToolMissingError(
            f"cannot build for {arch}: no binfmt handler {handler_name(arch)} is registered "
            f"in {binfmt_dir}",
            hint=REGISTER_HINT,
        )
    if not entry.enabled:
        raise ToolMissingError(
            f"cannot build for {arch}: the binfmt handler {entry.name} is disabled",
            hint=f"as root: echo 1 > {binfmt_dir / entry.name}",
        )
    if not entry.fix_binary:
        raise ToolMissingError(
            f"cannot build for {arch}: the binfmt handler {entry.name} lacks the F (fix-binary) "
            f"flag (flags: {entry.flags or 'none'}), so RUN steps inside a chroot cannot find "
            f"{entry.interpreter}",
            hint=f"as root: echo -1 > {binfmt_dir / entry.name}, then {REGISTER_HINT}",
        )


def conf_line(arch: str, conf_dir: Path | None = None) -> str:
    """The registration line for ``arch`` from qemu-user-static's ``binfmt.d`` file."""
    path = (conf_dir or BINFMT_CONF_DIR) / f"{handler_name(arch)}.conf"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ToolMissingError(
            f"cannot register {arch}: {path} not found ({exc.strerror})", hint=INSTALL_HINT
        ) from exc
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise ToolMissingError(f"cannot register {arch}: {path} has no registration line",
                           hint=INSTALL_HINT)


def register_binfmt(arches: Iterable[str], *, binfmt_dir: Path | None = None,
                    conf_dir: Path | None = None, bin_dir: Path | None = None,
                    native: str | None = None, mount: bool = True,
                    verify: bool = True) -> list[str]:
    """Register qemu handlers for ``arches`` (root only); returns the names newly registered.

    Idempotent: enabled handlers are left alone, the host architecture is skipped. Mounts
    ``binfmt_misc`` first when its ``register`` file is absent (containers and fresh VMs).
    ``verify`` re-reads each handler afterwards (off only where no kernel answers, in tests).
    """
    wanted = [a for a in dict.fromkeys(normalize_arch(a) for a in arches)
              if a != (native or host_arch())]
    if not wanted:
        return []
    binfmt_dir = binfmt_dir or BINFMT_DIR
    register = binfmt_dir / "register"
    if not register.exists():
        if os.geteuid() != 0:
            raise ToolMissingError(f"{binfmt_dir} is not mounted and we are not root",
                                   hint=f"as root: {REGISTER_HINT}")
        if not mount:
            raise ToolMissingError(f"{register} not found (binfmt_misc is not mounted)",
                                   hint=f"mount -t binfmt_misc binfmt_misc {binfmt_dir}")
        proc.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt_dir)],
                 error=ToolMissingError, what="mounting binfmt_misc")
    done: list[str] = []
    for arch in wanted:
        if not qemu_binary(arch, bin_dir).exists():
            raise ToolMissingError(f"cannot register {arch}: {qemu_binary(arch, bin_dir)} not "
                                   "found", hint=INSTALL_HINT)
        entry = read_entry(arch, binfmt_dir)
        if entry is not None and entry.enabled and entry.fix_binary:
            continue
        if entry is not None:
            # Present but disabled or without F: replace it with qemu-user-static's entry.
            _write(binfmt_dir / entry.name, "-1")
        _write(register, conf_line(arch, conf_dir))
        done.append(handler_name(arch))
    for arch in wanted if verify else ():
        check_binfmt(arch, binfmt_dir=binfmt_dir, bin_dir=bin_dir, native=native)
    return done


def _write(path: Path, text: str) -> None:
    try:
        with path.open("w", encoding="utf-8") as handle:
            handle.write(text)
    except PermissionError as exc:
        raise ToolMissingError(f"cannot write {path}: permission denied",
                               hint=f"as root: {REGISTER_HINT}") from exc
    except OSError as exc:
        raise ToolMissingError(f"writing {path} failed: {exc.strerror}",
                               hint=REGISTER_HINT) from exc
