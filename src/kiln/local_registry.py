"""The embedded local registry: Debian's ``docker-registry`` on 127.0.0.1.

When no registry is configured and we are not in CI, kiln pushes to a registry of its own whose
data lives under the project's state folder (``.kiln/registry``). The same class starts the
throwaway registries of the test suite and of the benchmarks, whose access log (one line per
request) is how kiln counts registry requests and bytes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from kiln import proc
from kiln.errors import RegistryTransientError
from kiln.state_dir import ensure_state_dir

REGISTRY_BINARY = "docker-registry"
_LISTENING = re.compile(r"listening on (\S+?):(\d+)")
# Combined-log-format access lines: 127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "agent"
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) (?P<bytes>\d+|-)')


@dataclass(frozen=True)
class AccessRecord:
    """One request as the registry's access log saw it."""

    method: str
    path: str
    status: int
    bytes: int

    @property
    def kind(self) -> str:
        """``manifest``, ``blob``, ``upload``, ``tags``, ``catalog`` or ``base``."""
        if "/manifests/" in self.path:
            return "manifest"
        if "/blobs/uploads" in self.path:
            return "upload"
        if "/blobs/" in self.path:
            return "blob"
        if self.path.endswith("/tags/list") or "/tags/list?" in self.path:
            return "tags"
        if self.path.startswith("/v2/_catalog"):
            return "catalog"
        return "base"


def parse_access_log(text: str) -> list[AccessRecord]:
    """Every request line of a registry log, in order."""
    records = []
    for line in text.splitlines():
        match = _ACCESS.search(line)
        if match and not line.startswith("time="):
            size = match["bytes"]
            records.append(
                AccessRecord(match["method"], match["path"], int(match["status"]),
                             0 if size == "-" else int(size))
            )
    return records


def registry_config(
    data_dir: Path, addr: str, extra: Mapping[str, object] | None = None
) -> dict[str, object]:
    """A docker-registry configuration: filesystem storage, deletes enabled, info logging."""
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(data_dir)},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": addr, "secret": "kiln-local-registry"},
    }
    for key, value in (extra or {}).items():
        config[key] = value
    return config


class RegistryServer:
    """One ``docker-registry`` process with its own config, data folder and log file."""

    def __init__(self, workdir: Path, *, addr: str = "127.0.0.1:0",
                 extra_config: Mapping[str, object] | None = None) -> None:
        self.workdir = workdir
        self.addr = addr
        self.extra_config = extra_config
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / "registry.log"
        self.data_dir = workdir / "data"
        self.process: proc.Background | None = None
        self.host: str | None = None
        self._log_offset = 0

    @property
    def address(self) -> str:
        """``host:port`` once started."""
        if self.host is None:
            raise RuntimeError("registry not started")
        return self.host

    def start(self, *, detach: bool = False, timeout: float = 15.0) -> str:
        proc.which(REGISTRY_BINARY)  # a missing binary fails before anything is written
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            yaml.safe_dump(registry_config(self.data_dir, self.addr, self.extra_config)),
            encoding="utf-8",
        )
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = proc.start([REGISTRY_BINARY, "serve", str(self.config_path)],
                                  log=self.log_path, error=RegistryTransientError,
                                  detach=detach)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self._log_since_start()
            match = _LISTENING.search(text)
            if match:
                self.host = f"{match[1]}:{match[2]}"
                if _ping(self.host):
                    return self.host
            if self.process.poll() is not None:
                raise RegistryTransientError(
                    f"{REGISTRY_BINARY} exited with {self.process.returncode} at start",
                    hint=f"see its log: {self.log_path}\n{text[-2000:]}",
                )
            time.sleep(0.05)
        self.stop()
        raise RegistryTransientError(f"{REGISTRY_BINARY} did not start within {timeout:.0f}s",
                                     hint=f"see its log: {self.log_path}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10)
        self.process = None

    def _log_since_start(self) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as handle:
            handle.seek(self._log_offset)
            return handle.read().decode("utf-8", "replace")

    # -- access log ------------------------------------------------------------------------
    def log_mark(self) -> int:
        """A position in the access log; pass it to :meth:`requests_since`."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def requests_since(self, mark: int = 0) -> list[AccessRecord]:
        """The requests the registry logged since ``mark`` (waits for the log to settle)."""
        previous = -1
        for _ in range(40):
            size = self.log_path.stat().st_size
            if size == previous:
                break
            previous = size
            time.sleep(0.05)
        with self.log_path.open("rb") as handle:
            handle.seek(mark)
            return parse_access_log(handle.read().decode("utf-8", "replace"))

    def __enter__(self) -> RegistryServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ping(host: str, scheme: str = "http") -> bool:
    try:
        with urllib.request.urlopen(f"{scheme}://{host}/v2/", timeout=2) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        # It answered: up, but wants auth (401) or TLS (400 "HTTP request to an HTTPS server").
        return True
    except (urllib.error.URLError, OSError):
        return False


# -- the project's embedded registry (outlives one kiln process) ---------------------------

@dataclass(frozen=True)
class LocalRegistryState:
    pid: int
    address: str
    workdir: str


def _state_file(state_dir: Path) -> Path:
    return state_dir / "registry" / "state.json"


def local_registry_status(state_dir: Path) -> LocalRegistryState | None:
    """The running embedded registry of this project, or ``None``."""
    path = _state_file(state_dir)
    if not path.exists():
        return None
    try:
        state = LocalRegistryState(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError):
        return None
    if _pid_alive(state.pid) and _ping(state.address):
        return state
    return None


def start_local_registry(state_dir: Path, port: int = 0) -> LocalRegistryState:
    """Start (or reuse) the project's embedded registry; returns its state."""
    running = local_registry_status(state_dir)
    if running is not None:
        return running
    server = RegistryServer(ensure_state_dir(state_dir) / "registry", addr=f"127.0.0.1:{port}")
    address = server.start(detach=True)
    assert server.process is not None
    state = LocalRegistryState(pid=server.process.pid, address=address,
                               workdir=str(server.workdir))
    _state_file(state_dir).write_text(json.dumps(state.__dict__), encoding="utf-8")
    return state


def stop_local_registry(state_dir: Path) -> bool:
    """Stop the embedded registry; ``True`` if one was running. Its data stays."""
    path = _state_file(state_dir)
    state = local_registry_status(state_dir)
    if path.exists():
        path.unlink()
    if state is None:
        return False
    os.kill(state.pid, signal.SIGTERM)
    for _ in range(100):
        if not _pid_alive(state.pid):
            break
        time.sleep(0.05)
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); treat it as dead.
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return status != "Z"
