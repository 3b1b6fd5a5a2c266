"""Benchmark: what mirroring costs the *source* registry (Docker Hub counts manifest GETs as pulls).

Two real registries: one stands in for Docker Hub, the other is ours. N small images (every third
one a 2-architecture manifest list) are built with buildah and pushed to the source. Then, on the
same images, each into its own empty destination:

* ``kiln mirror`` (the real CLI), a cold run and an up-to-date run;
* ``skopeo sync --src yaml --dest docker --all --preserve-digests``, a cold run and an
  up-to-date run.

For every run the source registry's access log gives manifest GETs (pulls), manifest HEADs
(free), blob requests and all requests. It also checks that both tools preserved every digest
(index digests included).

    PYTHONPATH=src python benchmarks/mirror.py [--images 6] [--output benchmarks/results/mirror.txt]

Note: skopeo keeps a blob-info cache (``/var/lib/containers/cache`` for root) that makes its blob
request counts vary between runs (docs/host-facts.md); manifest counts are stable. kiln's cold copy is
skopeo underneath, so its blob counts vary the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from helpers.mirror_support import Images, head_digest  # noqa: E402
from kiln.local_registry import AccessRecord, RegistryServer  # noqa: E402


@dataclass
class Counts:
    tool: str
    run: str
    manifest_gets: int
    manifest_heads: int
    blob_requests: int
    all_requests: int
    seconds: float


def count(tool: str, run: str, records: list[AccessRecord], seconds: float) -> Counts:
    return Counts(
        tool, run,
        manifest_gets=sum(1 for r in records if r.kind == "manifest" and r.method == "GET"),
        manifest_heads=sum(1 for r in records if r.kind == "manifest" and r.method == "HEAD"),
        blob_requests=sum(1 for r in records if r.kind == "blob"),
        all_requests=len(records),
        seconds=round(seconds, 2),
    )


def build_and_seed(images: Images, source: str, n: int) -> list[tuple[str, str, bool]]:
    """Push ``n`` images; returns (repository, tag, multi-arch)."""
    seeded = []
    for index in range(n):
        repo, tag = f"library/bench{index}", "latest"
        if index % 3 == 2:
            members = [images.image(f"kiln-bench-{index}-{arch}", f"bench {index} {arch}", arch,
                                    layers=2) for arch in ("amd64", "arm64")]
            images.push_multi(f"kiln-bench-{index}", members, f"{source}/{repo}:{tag}")
            seeded.append((repo, tag, True))
        else:
            local = images.image(f"kiln-bench-{index}", f"bench {index}", layers=1 + index % 3)
            images.push(local, f"{source}/{repo}:{tag}")
            seeded.append((repo, tag, False))
    return seeded


def kiln_run(config: Path, destination: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "KILN_REGISTRY": destination}
    for name in ("CI", "GITLAB_CI"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-c", "from kiln.cli import main; main()", "mirror",
                           "--config", str(config)], cwd=workdir, env=env, capture_output=True,
                          text=True, check=True)


def sync_run(config: Path, destination: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", "sync", "--src", "yaml", "--dest", "docker", "--all",
                           "--preserve-digests", "--dest-tls-verify=false", str(config),
                           destination], capture_output=True, text=True, check=True)


def measure(source: RegistryServer, tool: str, run: str, action) -> Counts:  # type: ignore[no-untyped-def]
    mark = source.log_mark()
    started = time.monotonic()
    action()
    seconds = time.monotonic() - started
    return count(tool, run, source.requests_since(mark), seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--output", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kiln-bench-mirror-") as tmp:
        work = Path(tmp)
        images = Images(work / "storage" / "root", work / "storage" / "runroot", work / "files")
        source = RegistryServer(work / "source")
        kiln_dest = RegistryServer(work / "kiln-dest")
        sync_dest = RegistryServer(work / "sync-dest")
        for server in (source, kiln_dest, sync_dest):
            server.start()
        try:
            seeded = build_and_seed(images, source.address, args.images)
            names = "\n".join(f"  - source: {source.address}/{repo}:{tag}"
                              for repo, tag, _ in seeded)
            kiln_config = work / "mirrors.yml"
            kiln_config.write_text(f"destination: ${{REGISTRY}}/mirror\nimages:\n{names}\n",
                                   encoding="utf-8")
            sync_config = work / "sync.yml"
            listing = "\n".join(f"    {repo}: [\"{tag}\"]" for repo, tag, _ in seeded)
            sync_config.write_text(f"{source.address}:\n  tls-verify: false\n  images:\n"
                                   f"{listing}\n", encoding="utf-8")

            results = [
                measure(source, "kiln mirror", "cold",
                        lambda: kiln_run(kiln_config, kiln_dest.address, work)),
                measure(source, "kiln mirror", "up to date",
                        lambda: kiln_run(kiln_config, kiln_dest.address, work)),
                measure(source, "skopeo sync", "cold",
                        lambda: sync_run(sync_config, f"{sync_dest.address}/sync")),
                measure(source, "skopeo sync", "up to date",
                        lambda: sync_run(sync_config, f"{sync_dest.address}/sync")),
            ]
            digests_ok = {"kiln mirror": True, "skopeo sync": True}
            for repo, tag, _ in seeded:
                want = head_digest(source.address, repo, tag)
                if head_digest(kiln_dest.address, f"mirror/{repo}", tag) != want:
                    digests_ok["kiln mirror"] = False
                short = repo.rsplit("/", 1)[-1]
                if head_digest(sync_dest.address, f"sync/{short}", tag) != want:
                    digests_ok["skopeo sync"] = False
        finally:
            for server in (source, kiln_dest, sync_dest):
                server.stop()

    multi = sum(1 for *_, m in seeded if m)
    lines = [
        f"mirror benchmark: {len(seeded)} images ({multi} of them 2-arch manifest lists), "
        "requests seen by the SOURCE registry (Docker Hub counts manifest GETs as pulls)",
        "",
        f"| {'tool':<12} | {'run':<10} | manifest GETs (pulls) | manifest HEADs | blob requests "
        "| all requests | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(f"| {r.tool:<12} | {r.run:<10} | {r.manifest_gets:>21} | "
                     f"{r.manifest_heads:>14} | {r.blob_requests:>13} | {r.all_requests:>12} | "
                     f"{r.seconds:>7} |")
    lines += ["", "digests preserved (index digests included): "
              + ", ".join(f"{tool}: {'yes' if ok else 'NO'}" for tool, ok in digests_ok.items())]
    report = "\n".join(lines)
    print(report)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report + "\n", encoding="utf-8")
        args.output.with_suffix(".json").write_text(json.dumps(
            {"images": len(seeded), "multi_arch": multi,
             "results": [asdict(r) for r in results], "digests_preserved": digests_ok},
            indent=2) + "\n", encoding="utf-8")
    return 0 if all(digests_ok.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
