#!/usr/bin/env python3
"""Benchmark: registry-side retag and multi-arch index, kiln vs the peers' best invocations.

A real docker-registry; a 4-layer image of random data per architecture (amd64, arm64), built
and pushed by buildah. Every row compares the *same operation*, each tool's whole command-line
process(es) against the same registry, requests read from the registry's access log:

* retag an image (one new tag on a single-arch image): ``invoke tag`` vs ``skopeo copy
  --preserve-digests`` (the new tag must name the same digest);
* retag a multi-arch index (one new tag on a 2-arch index): ``invoke tag`` vs ``skopeo copy
  --all --preserve-digests`` (without ``--all`` skopeo copies only the host's child: another
  operation, a different digest);
* make the index from the per-arch tags that are already in the repository: ``invoke
  manifest`` vs ``buildah manifest create`` + ``manifest add`` per arch + ``manifest push
  --format v2s2`` *without* ``--all`` (the children are in the repository already; ``--all``
  would re-check and re-send every child and its blobs).

The wall times are medians of fresh processes on both sides (kiln's include starting Python and
invoke; the start-up alone is measured and shown). Nothing is called in-process.

    python benchmarks/registry_ops.py --write    # run; results/registry_ops.{json,md} + README
    python benchmarks/registry_ops.py --render   # results/registry_ops.md + README from the json

The README's registry benchmark section is generated from ``benchmarks/results/registry_ops.json``
(between its markers) and tests/test_readme_tables.py checks it: never paste it by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from kiln.local_registry import AccessRecord, RegistryServer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "registry_ops.json"
REPORT = ROOT / "benchmarks" / "results" / "registry_ops.md"
README = ROOT / "README.md"
START = "<!-- registry-ops-benchmark:start (python benchmarks/registry_ops.py --write) -->"
END = "<!-- registry-ops-benchmark:end -->"

LAYERS = 4
ARCHES = ("amd64", "arm64")
REPEAT = 5
KINDS = ["manifest GET", "manifest HEAD", "manifest PUT", "blob GET", "blob HEAD", "upload",
         "/v2/ ping"]

# scenario -> (title, what the peer runs, why those flags)
SCENARIOS: dict[str, tuple[str, str, str]] = {
    "retag image": (
        "retag a single-arch image (1 new tag)",
        "skopeo copy --preserve-digests docker://R/single:p-1 docker://R/single:peer-1",
        "`--preserve-digests`: the new tag must name the same digest, as kiln's does"),
    "retag index": (
        "retag a 2-arch index (1 new tag)",
        "skopeo copy --all --preserve-digests docker://R/multi:p-1 docker://R/multi:peer-1",
        "`--all`: without it skopeo copies only the host's child, not the index (a different "
        "operation and digest)"),
    "index": (
        "make the 2-arch index from p-1-amd64 and p-1-arm64 (already in the repository)",
        "buildah manifest create L; buildah manifest add L docker://R/multi:p-1-<arch> (x2); "
        "buildah manifest push --format v2s2 L docker://R/multi:peer-index",
        "no `--all`: the children are in the repository already (with `--all` buildah checks "
        "and re-sends each child); `--format v2s2`: a Docker manifest list, as kiln writes for "
        "v2s2 children"),
}


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
    """Requests by kind, their total and the bytes the registry sent."""
    counts: Counter[str] = Counter()
    for r in records:
        if r.kind in {"manifest", "blob"}:
            counts[f"{r.kind} {r.method}"] += 1
        elif r.kind == "upload":
            counts["upload"] += 1
        elif r.kind == "base":
            counts["/v2/ ping"] += 1
        else:
            counts[f"{r.kind} {r.method}"] += 1
    counts["total requests"] = len(records)
    counts["bytes sent by registry"] = sum(r.bytes for r in records)
    return dict(counts)


def measure(server: RegistryServer, commands: list[list[str]], env: dict[str, str],
            cwd: Path) -> dict[str, int]:
    mark = server.log_mark()
    for cmd in commands:
        run(cmd, env=env, cwd=cwd)
    return classify(server.requests_since(mark))


def raw_manifest(host: str, ref: str) -> bytes:
    return subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                           f"docker://{host}/{ref}"], capture_output=True, check=True).stdout


def digest_of(host: str, ref: str) -> str:
    return "sha256:" + hashlib.sha256(raw_manifest(host, ref)).hexdigest()


def kiln_startup(env: dict[str, str], cwd: Path) -> float:
    """Median seconds of ``python -m invoke --list`` with kiln's tasks: the start-up every kiln
    row includes (the peers are Go binaries)."""
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "--list"]
    return statistics.median(run(invoke, env=env, cwd=cwd) for _ in range(REPEAT))


def version(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (done.stdout.strip() or done.stderr.strip()).splitlines()[0]


def run_benchmark(work: Path, layer_mb: float) -> dict[str, Any]:
    storage = ["--root", str(work / "root"), "--runroot", str(work / "runroot"),
               "--storage-driver", "vfs"]
    server = RegistryServer(work / "registry")
    host = server.start()
    try:
        # -- the images: 4 layers of random data per arch ------------------------------------
        size = int(layer_mb * 1024 * 1024)
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
                 f"bench-{arch}", f"docker://{host}/multi:p-1-{arch}"])
        run(["buildah", *storage, "push", "--quiet", "--format", "v2s2", "--tls-verify=false",
             "bench-amd64", f"docker://{host}/single:p-1"])

        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CI_", "KILN_", "IMAGE_", "GITLAB_"))}
        env.update(PYTHONPATH=str(ROOT / "src"), KILN_REGISTRY=host, CI="true",
                   CI_PIPELINE_ID="1")
        invoke = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
        skopeo = ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                  "--dest-tls-verify=false", "--preserve-digests"]
        kiln_cmds: dict[str, tuple[list[str], dict[str, str]]] = {
            "index": ([*invoke, "manifest"],
                      dict(env, IMAGE_NAME="multi", IMAGE_ARCHES=" ".join(ARCHES))),
            "retag image": ([*invoke, "tag"], dict(env, IMAGE_NAME="single")),
            "retag index": ([*invoke, "tag"], dict(env, IMAGE_NAME="multi")),
        }
        peer_index = [["buildah", *storage, "manifest", "create", "bench-list"]]
        peer_index += [["buildah", *storage, "manifest", "add", "--tls-verify=false",
                        "bench-list", f"docker://{host}/multi:p-1-{arch}"] for arch in ARCHES]
        peer_index.append(["buildah", *storage, "manifest", "push", "--quiet", "--format",
                           "v2s2", "--tls-verify=false", "bench-list",
                           f"docker://{host}/multi:peer-index"])
        peer_cmds: dict[str, list[list[str]]] = {
            "index": peer_index,
            "retag image": [[*skopeo, f"docker://{host}/single:p-1",
                             f"docker://{host}/single:peer-1"]],
            "retag index": [[*skopeo, "--all", f"docker://{host}/multi:p-1",
                             f"docker://{host}/multi:peer-1"]],
        }

        # -- requests: each operation once, in pipeline order (the index before its retag) ---
        counts: dict[str, dict[str, dict[str, int]]] = {}
        for scenario in ("index", "retag image", "retag index"):
            cmd, kiln_env = kiln_cmds[scenario]
            counts[scenario] = {"kiln": measure(server, [cmd], kiln_env, work),
                                "peer": measure(server, peer_cmds[scenario], env, work)}

        # -- both did the same thing ---------------------------------------------------------
        per_arch = {a: digest_of(host, f"multi:p-1-{a}") for a in ARCHES}

        def children(ref: str) -> dict[str, str]:
            doc = json.loads(raw_manifest(host, ref))
            return {c["platform"]["architecture"]: c["digest"] for c in doc["manifests"]}

        same = {
            "index children = per-arch digests": {
                "kiln": children("multi:p-1") == per_arch,
                "peer": children("multi:peer-index") == per_arch},
            "index media type": {
                "kiln": json.loads(raw_manifest(host, "multi:p-1"))["mediaType"],
                "peer": json.loads(raw_manifest(host, "multi:peer-index"))["mediaType"]},
            "retagged image digest kept": {
                "kiln": digest_of(host, "single:g-1") == digest_of(host, "single:p-1"),
                "peer": digest_of(host, "single:peer-1") == digest_of(host, "single:p-1")},
            "retagged index digest kept": {
                "kiln": digest_of(host, "multi:g-1") == digest_of(host, "multi:p-1"),
                "peer": digest_of(host, "multi:peer-1") == digest_of(host, "multi:p-1")},
        }

        # -- wall time: medians of fresh processes (every operation is idempotent) -----------
        def peer_seconds(scenario: str) -> float:
            if scenario == "index":  # the local list is the peer's scratch state: not timed
                run(["buildah", *storage, "manifest", "rm", "bench-list"])
            return sum(run(cmd, env=env, cwd=work) for cmd in peer_cmds[scenario])

        seconds = {}
        for scenario in ("index", "retag image", "retag index"):
            cmd, kiln_env = kiln_cmds[scenario]
            seconds[scenario] = {
                "kiln": round(statistics.median(run(cmd, env=kiln_env, cwd=work)
                                                for _ in range(REPEAT)), 3),
                "peer": round(statistics.median(peer_seconds(scenario)
                                                for _ in range(REPEAT)), 3)}
        startup = round(kiln_startup(env, work), 3)
    finally:
        server.stop()
        subprocess.run(["buildah", *storage, "rm", "--all"], capture_output=True)
        subprocess.run(["buildah", *storage, "rmi", "--all", "--force"], capture_output=True)

    return {
        "host": f"Linux {platform.machine()}, {os.cpu_count()} cores; registry on 127.0.0.1",
        "image": {"layers": LAYERS, "layer_mb": layer_mb, "arches": list(ARCHES)},
        "versions": {"skopeo": version(["skopeo", "--version"]),
                     "buildah": version(["buildah", "--version"])},
        "repeat": REPEAT,
        "counts": counts,
        "seconds": seconds,
        "kiln_startup_seconds": startup,
        "same_result": same,
    }


# -- the report --------------------------------------------------------------------------------

def render(data: dict[str, Any]) -> str:
    """Markdown for the README and results/registry_ops.md, from the results file's data."""
    image = data["image"]
    lines = [
        f"{data['host']}; {image['layers']} layers x {image['layer_mb']:g} MB of random data "
        f"per arch ({', '.join(image['arches'])}), built and pushed by buildah; requests from "
        f"the registry's access log. Peers: {data['versions']['skopeo']}, "
        f"{data['versions']['buildah']}, each with its best invocation for the operation "
        "(`R` = the registry):",
        "",
        "| operation | peer command | why these flags |",
        "| --- | --- | --- |",
    ]
    for title, command, why in SCENARIOS.values():
        lines.append(f"| {title} | `{command}` | {why} |")
    lines += ["", "| requests | " + " | ".join(
        f"{s}: kiln | {s}: peer" for s in SCENARIOS) + " |",
        "| --- | " + " | ".join("---: | ---:" for _ in SCENARIOS) + " |"]
    counts = data["counts"]
    for kind in [*KINDS, "total requests", "bytes sent by registry"]:
        cells = []
        for scenario in SCENARIOS:
            cells += [f"{counts[scenario][tool].get(kind, 0):,}" for tool in ("kiln", "peer")]
        name = f"**{kind}**" if kind == "total requests" else kind
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seconds = data["seconds"]
    lines += [
        "",
        f"Wall time, median of {data['repeat']} runs, fresh processes on both sides (kiln: "
        "`python -m invoke <task>`, which includes "
        f"{data['kiln_startup_seconds']:.3f} s of Python and invoke start-up, measured alone "
        "as `invoke --list`; the peers are Go binaries; request counts are stable, seconds "
        "vary with the host's load):",
        "",
        "| operation | kiln | peer | peer / kiln |",
        "| --- | ---: | ---: | ---: |",
    ]
    for scenario, (title, _, _) in SCENARIOS.items():
        kiln, peer = seconds[scenario]["kiln"], seconds[scenario]["peer"]
        lines.append(f"| {title} | {kiln:.3f} s | {peer:.3f} s | {peer / kiln:.2f} |")
    same = data["same_result"]
    lines += ["", "Same result: " + "; ".join(
        f"{check}: kiln {_word(v['kiln'])}, peer {_word(v['peer'])}" for check, v in same.items())
        + "."]
    return "\n".join(lines)


def _word(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return f"`{value}`"


def readme_section(text: str) -> str | None:
    """The generated text between the README's markers (None when they are missing)."""
    match = re.search(re.escape(START) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    return match.group(1) if match else None


def write_outputs(data: dict[str, Any], readme: Path = README) -> str:
    text = render(data)
    REPORT.write_text(f"## registry operations benchmark\n\n{text}\n", encoding="utf-8")
    content = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(content):
        raise SystemExit(f"{readme}: no {START} ... {END} section to replace")
    readme.write_text(pattern.sub(lambda _: f"{START}\n{text}\n{END}", content),
                      encoding="utf-8")
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--layer-mb", type=float, default=6.0, help="size of each layer (MB)")
    parser.add_argument("--write", action="store_true",
                        help=f"write {RESULTS.relative_to(ROOT)}, the .md and the README section")
    parser.add_argument("--render", action="store_true",
                        help="only regenerate the .md and the README section from the json")
    args = parser.parse_args()
    if args.render:
        print(write_outputs(json.loads(RESULTS.read_text(encoding="utf-8"))))
        return 0
    for tool in ("buildah", "skopeo", "docker-registry"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not installed (apt-get install {tool})")
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    try:
        data = run_benchmark(work, args.layer_mb)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.write:
        RESULTS.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        print(write_outputs(data))
    else:
        print(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
