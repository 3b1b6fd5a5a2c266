#!/usr/bin/env python3
"""Benchmark: registry-side tag and multi-arch index, kiln vs the peers, counted by the registry.

Starts a real docker-registry, builds a 4-layer image (tens of MB of random data) for amd64 and
arm64 with real buildah, pushes both, then runs, each against the same registry:

* retag: ``invoke tag`` (kiln) vs ``skopeo copy`` of the same image to the new tag;
* multi-arch index: ``invoke manifest`` (kiln) vs ``buildah manifest create`` / ``add`` /
  ``push --all``;

and prints, from the registry's access log, the requests by kind (manifest GET/HEAD/PUT, blob
GET/HEAD, uploads) and the bytes the registry sent, plus the wall time of each command (both
sides are whole command-line runs, so kiln's figures include starting Python and invoke).

    python benchmarks/registry_ops.py [--layer-mb 6] [--out benchmarks/results/registry_ops.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from kiln import promote  # noqa: E402
from kiln.ci_context import CIContext  # noqa: E402
from kiln.local_registry import AccessRecord, RegistryServer  # noqa: E402
from kiln.registry.client import RegistryClient  # noqa: E402
from kiln.settings import Settings  # noqa: E402

LAYERS = 4
ARCHES = ("amd64", "arm64")
REPEAT = 5


def run(args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    """Run a command, fail loudly, return its wall time in seconds."""
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(args)}\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def classify(records: list[AccessRecord]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for r in records:
        if r.kind == "manifest":
            counts[f"manifest {r.method}"] += 1
        elif r.kind == "blob":
            counts[f"blob {r.method}"] += 1
        elif r.kind == "upload":
            counts["upload"] += 1
        else:
            counts[f"{r.kind} {r.method}"] += 1
    counts["total requests"] = len(records)
    counts["bytes sent by registry"] = sum(r.bytes for r in records)
    return dict(counts)


def measure(server: RegistryServer, commands: list[list[str]], env: dict[str, str],
            cwd: Path) -> tuple[dict[str, int], float]:
    mark = server.log_mark()
    seconds = sum(run(cmd, env=env, cwd=cwd) for cmd in commands)
    return classify(server.requests_since(mark)), seconds


def head_digest(host: str, ref: str) -> str:
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                          f"docker://{host}/{ref}"], capture_output=True, check=True).stdout
    import hashlib

    return "sha256:" + hashlib.sha256(out).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer-mb", type=float, default=6.0, help="size of each layer (MB)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    for tool in ("buildah", "skopeo", "docker-registry"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not installed (apt-get install {tool})")

    work = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    storage = ["--root", str(work / "root"), "--runroot", str(work / "runroot"),
               "--storage-driver", "vfs"]
    server = RegistryServer(work / "registry")
    host = server.start()
    try:
        # -- the image: 4 layers of random data, per arch ----------------------------------
        size = int(args.layer_mb * 1024 * 1024)
        for arch in ARCHES:
            ctx = work / f"ctx-{arch}"
            ctx.mkdir()
            lines = ["FROM scratch"]
            for i in range(LAYERS):
                (ctx / f"data{i}.bin").write_bytes(os.urandom(size))
                lines.append(f"COPY data{i}.bin /data{i}.bin")
            (ctx / "Containerfile").write_text("\n".join(lines) + "\n")
            run(["buildah", *storage, "build", "--quiet", "--isolation", "chroot", "--layers",
                 "--format", "docker", "--arch", arch, "-t", f"bench-{arch}", "-f",
                 str(ctx / "Containerfile"), str(ctx)])
            run(["buildah", *storage, "push", "--quiet", "--format", "v2s2", "--tls-verify=false",
                 f"bench-{arch}", f"docker://{host}/bench:p-1-{arch}"])
        run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
             f"docker://{host}/bench:p-1-amd64", f"docker://{host}/bench:p-1"])

        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CI_", "KILN_", "IMAGE_", "GITLAB_"))}
        env.update(PYTHONPATH=str(ROOT / "src"), KILN_REGISTRY=host, CI="true",
                   CI_PIPELINE_ID="1", IMAGE_NAME="bench")
        invoke = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
        skopeo = ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                  "--dest-tls-verify=false"]

        # -- retag: one new tag on a 4-layer image -----------------------------------------
        kiln_tag, kiln_tag_s = measure(server, [[*invoke, "tag"]], env, work)  # -> g-1
        peer_tag_cmd = [*skopeo, f"docker://{host}/bench:p-1", f"docker://{host}/bench:peer-1"]
        peer_tag, peer_tag_s = measure(server, [peer_tag_cmd], env, work)

        # -- multi-arch index ----------------------------------------------------------------
        # kiln writes p-1 (replacing the single-arch p-1 used for the retag above)
        kiln_idx, kiln_idx_s = measure(
            server, [[*invoke, "manifest"]], dict(env, IMAGE_ARCHES=" ".join(ARCHES)), work)
        peer_cmds = [["buildah", *storage, "manifest", "create", "bench-list"]]
        for arch in ARCHES:
            peer_cmds.append(["buildah", *storage, "manifest", "add", "--tls-verify=false",
                              "bench-list", f"docker://{host}/bench:p-1-{arch}"])
        peer_cmds.append(["buildah", *storage, "manifest", "push", "--all", "--quiet",
                          "--tls-verify=false", "bench-list",
                          f"docker://{host}/bench:peer-index"])
        peer_idx, peer_idx_s = measure(server, peer_cmds, env, work)

        per_arch = {a: head_digest(host, f"bench:p-1-{a}") for a in ARCHES}

        # -- wall time: median of repeated runs (all operations are idempotent) --------------
        def median(values: list[float]) -> float:
            return sorted(values)[len(values) // 2]

        def rerun_peer_index() -> float:
            run(["buildah", *storage, "manifest", "rm", "bench-list"])
            return sum(run(cmd, env=env, cwd=work) for cmd in peer_cmds)

        settings = Settings.resolve(work, {}, {}, {}).replace(
            registry=host, ci=CIContext(pipeline_id="1"), image="bench")
        factory = (lambda h: RegistryClient(h))  # noqa: E731

        def in_process_tag() -> float:
            start = time.perf_counter()
            promote.promote(settings, "bench", host, ("g-1",), source_ref="p-1",
                            client_factory=factory, log=lambda op: None)
            return time.perf_counter() - start

        def in_process_index() -> float:
            start = time.perf_counter()
            with RegistryClient(host) as client:
                promote.assemble_index(promote.Registry(client, "bench"), settings.ci, ARCHES)
            return time.perf_counter() - start

        times = {
            "tag kiln cli": median([run([*invoke, "tag"], env=env, cwd=work) for _ in range(REPEAT)]),
            "tag kiln lib": median([in_process_tag() for _ in range(REPEAT)]),
            "tag peer": median([run(peer_tag_cmd, env=env, cwd=work) for _ in range(REPEAT)]),
            "index kiln cli": median([run([*invoke, "manifest"], env=dict(
                env, IMAGE_ARCHES=" ".join(ARCHES)), cwd=work) for _ in range(REPEAT)]),
            "index kiln lib": median([in_process_index() for _ in range(REPEAT)]),
            "index peer": median([rerun_peer_index() for _ in range(REPEAT)]),
        }

        def children(ref: str) -> dict[str, str]:
            raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                  f"docker://{host}/{ref}"], capture_output=True,
                                 check=True).stdout
            doc = json.loads(raw)
            return {c["platform"]["architecture"]: c["digest"] for c in doc["manifests"]}

        kiln_kept = children("bench:p-1") == per_arch
        peer_kept = children("bench:peer-index") == per_arch
    finally:
        server.stop()
        subprocess.run(["buildah", *storage, "rm", "--all"], capture_output=True)
        subprocess.run(["buildah", *storage, "rmi", "--all", "--force"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    keys = ["manifest GET", "manifest HEAD", "manifest PUT", "blob GET", "blob HEAD", "upload",
            "total requests", "bytes sent by registry"]

    def table(title: str, left: str, a: dict[str, int], right: str, b: dict[str, int]) -> str:
        rows = [f"### {title}", "", f"| requests | {left} | {right} |", "| --- | ---: | ---: |"]
        extra = sorted((set(a) | set(b)) - set(keys))
        for key in keys + extra:
            rows.append(f"| {key} | {a.get(key, 0):,} | {b.get(key, 0):,} |")
        return "\n".join(rows)

    image_mb = LAYERS * args.layer_mb
    report = "\n\n".join([
        f"## registry_ops benchmark ({LAYERS} layers x {args.layer_mb:g} MB random data per "
        f"arch = {image_mb:g} MB per image, arches: {', '.join(ARCHES)}; docker-registry "
        "access log)",
        table("retag one image (1 new tag)", "kiln `tag`", kiln_tag,
              "`skopeo copy` retag", peer_tag),
        table("multi-arch index (2 arches)", "kiln `manifest`", kiln_idx,
              "`buildah manifest create/add/push --all`", peer_idx),
        f"### wall time (median of {REPEAT} runs, same registry on 127.0.0.1, same run)\n\n"
        "kiln cli = `python -m invoke <task>` (includes starting Python + invoke); kiln lib = "
        "the same operation called in-process; peer = the peer's command(s).\n\n"
        "| operation | kiln cli | kiln lib | peer | peer / kiln cli | peer / kiln lib |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: |\n"
        + "\n".join(
            f"| {op} | {times[op + ' kiln cli']:.3f} s | {times[op + ' kiln lib']:.3f} s | "
            f"{times[op + ' peer']:.3f} s | {times[op + ' peer'] / times[op + ' kiln cli']:.2f} | "
            f"{times[op + ' peer'] / times[op + ' kiln lib']:.2f} |"
            for op in ("tag", "index")),
        "### child digests of the index equal the per-arch tags' digests\n\n"
        f"kiln: {'yes' if kiln_kept else 'NO'}; buildah: {'yes' if peer_kept else 'NO'}",
    ])
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
