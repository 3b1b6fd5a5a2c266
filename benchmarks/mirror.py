"""Benchmark: what mirroring costs the *source* registry (Docker Hub counts manifest GETs as pulls).

Three real registries on 127.0.0.1: one stands in for Docker Hub, one is kiln's destination, one
is the peer's. Request counts come from the source registry's access log; wall time is the
whole command (kiln as its CLI, a Python process; the peer as ``skopeo sync``). Same run, same
images, for both tools:

1. **tag set**: a repository of 300 tags (``MAJOR.MINOR.PATCH``), mirrored by the semver range
   ``>=16 <17`` (50 tags), cold and then up to date. kiln: ``tags: {semver: ...}`` in
   ``mirrors.yml``; the peer: ``skopeo sync --src yaml`` with ``images-by-semver``, or, where the
   installed skopeo predates that key (Debian 12 ships 1.9.3, which ignores it and syncs
   nothing), ``images-by-tag-regex`` with the regex that selects the same 50 tags. Both list the
   tags once; the report names the selector used.
2. **changed child**: a 4-arch manifest list mirrored cold; then upstream changes one child
   (a new arm64 image) and both tools run again. kiln's goal: 2 GETs (the index and the new
   child); the peer copies the index with ``--all``.

Both destinations are checked to hold the source's digests (index digests included).

    python benchmarks/mirror.py            # print the tables
    python benchmarks/mirror.py --write    # also results/mirror.json, results/mirror.md, README
    python benchmarks/mirror.py --render   # results/mirror.md and README from results/mirror.json

The README's mirror benchmark section is generated from ``benchmarks/results/mirror.json``
(between the ``mirror-benchmark`` markers), never pasted. kiln's wall times include its Python
start-up, measured on its own and reported with the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from helpers.mirror_support import head_digest  # noqa: E402
from helpers.registry_seed import Seeder, version_tags  # noqa: E402
from kiln.local_registry import AccessRecord, RegistryServer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "mirror.json"
RENDERED = RESULTS.with_suffix(".md")
README = ROOT / "README.md"
START, END = "<!-- mirror-benchmark:start -->", "<!-- mirror-benchmark:end -->"
SEMVER_RANGE = ">=16 <17"
SAME_TAGS_REGEX = r"^16\.[0-9]+\.[0-9]+$"  # what the range selects among MAJOR.MINOR.PATCH tags
TAG_REPO, INDEX_REPO = "library/node", "library/multi"


@dataclass
class Counts:
    scenario: str
    tool: str
    run: str
    manifest_gets: int
    manifest_heads: int
    tag_lists: int
    blob_requests: int
    all_requests: int
    seconds: float


def count(scenario: str, tool: str, run: str, records: list[AccessRecord],
          seconds: float) -> Counts:
    def n(kind: str, method: str | None = None) -> int:
        return sum(1 for r in records if r.kind == kind and (method is None or r.method == method))

    return Counts(scenario, tool, run, manifest_gets=n("manifest", "GET"),
                  manifest_heads=n("manifest", "HEAD"), tag_lists=n("tags"),
                  blob_requests=n("blob"), all_requests=len(records), seconds=round(seconds, 2))


def measure(source: RegistryServer, scenario: str, tool: str, run: str,
            action: Callable[[], object]) -> Counts:
    mark = source.log_mark()
    started = time.monotonic()
    action()
    seconds = time.monotonic() - started
    return count(scenario, tool, run, source.requests_since(mark), seconds)


def kiln_run(config: Path, destination: str, workdir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CI", "GITLAB_", "KILN_"))}
    env.update(PYTHONPATH=str(ROOT / "src"), KILN_REGISTRY=destination)
    done = subprocess.run([sys.executable, "-c", "from kiln.cli import main; main()", "mirror",
                           "--config", str(config)], cwd=workdir, env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"kiln mirror failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def sync_run(config: Path, destination: str) -> str:
    done = subprocess.run(["skopeo", "sync", "--src", "yaml", "--dest", "docker", "--all",
                           "--preserve-digests", "--dest-tls-verify=false", str(config),
                           destination], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"skopeo sync failed ({done.returncode}):\n{done.stderr}")
    return done.stderr


def skopeo_version() -> str:
    done = subprocess.run(["skopeo", "--version"], capture_output=True, text=True, check=True)
    return done.stdout.strip().rsplit(" ", 1)[-1]


def semver_supported(source: str, work: Path) -> bool:
    """Whether this skopeo knows ``images-by-semver`` (older ones ignore the key)."""
    probe = work / "probe.yml"
    probe.write_text(f"{source}:\n  tls-verify: false\n  images-by-semver:\n"
                     f"    {TAG_REPO}: \"{SEMVER_RANGE}\"\n", encoding="utf-8")
    done = subprocess.run(["skopeo", "sync", "--src", "yaml", "--dest", "dir", str(probe),
                           str(work / "probe-out")], capture_output=True, text=True, check=False)
    return done.returncode == 0 and "No images specified" not in done.stderr


def tags_of(registry: str, repo: str) -> set[str]:
    done = subprocess.run(["skopeo", "list-tags", "--tls-verify=false",
                           f"docker://{registry}/{repo}"], capture_output=True, text=True,
                          check=False)
    return set(json.loads(done.stdout)["Tags"]) if done.returncode == 0 else set()


def kiln_startup() -> float:
    """Median seconds for a Python process to import kiln's command line (no work done)."""
    times = []
    for _ in range(3):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "import kiln.cli"], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        times.append(time.monotonic() - started)
    return round(sorted(times)[1], 2)


def run_benchmark(work: Path) -> dict[str, Any]:
    source = RegistryServer(work / "source")
    kiln_dest = RegistryServer(work / "kiln-dest")
    sync_dest = RegistryServer(work / "sync-dest")
    servers = (source, kiln_dest, sync_dest)
    for server in servers:
        server.start()
    try:
        tags = version_tags()
        labels = {"amd64": "a1", "arm64": "b1", "arm": "c1", "ppc64le": "d1"}
        with Seeder(source.address) as seeder:
            for tag in tags:
                seeder.image(TAG_REPO, tag)
            seeder.index(INDEX_REPO, "latest", labels)
        by_semver = semver_supported(source.address, work)
        selector = (f"images-by-semver \"{SEMVER_RANGE}\"" if by_semver
                    else f"images-by-tag-regex \"{SAME_TAGS_REGEX}\"")

        kiln_config = work / "mirrors.yml"
        kiln_config.write_text(
            "destination: ${REGISTRY}/mirror\nimages:\n"
            f"  - source: {source.address}/{TAG_REPO}\n    tags: {{semver: \"{SEMVER_RANGE}\"}}\n",
            encoding="utf-8")
        sync_config = work / "sync.yml"
        key = "images-by-semver" if by_semver else "images-by-tag-regex"
        value = SEMVER_RANGE if by_semver else SAME_TAGS_REGEX
        sync_config.write_text(f"{source.address}:\n  tls-verify: false\n  {key}:\n"
                               f"    {TAG_REPO}: '{value}'\n", encoding="utf-8")
        results = [
            measure(source, "tag set", "kiln mirror", "cold",
                    lambda: kiln_run(kiln_config, kiln_dest.address, work)),
            measure(source, "tag set", "kiln mirror", "up to date",
                    lambda: kiln_run(kiln_config, kiln_dest.address, work)),
            measure(source, "tag set", "skopeo sync", "cold",
                    lambda: sync_run(sync_config, f"{sync_dest.address}/sync")),
            measure(source, "tag set", "skopeo sync", "up to date",
                    lambda: sync_run(sync_config, f"{sync_dest.address}/sync")),
        ]
        wanted = {t for t in tags if t.startswith("16.")}
        short = TAG_REPO.rsplit("/", 1)[-1]
        selected = {"kiln mirror": tags_of(kiln_dest.address, f"mirror/{TAG_REPO}"),
                    "skopeo sync": tags_of(sync_dest.address, f"sync/{short}")}
        checks = {tool: got == wanted for tool, got in selected.items()}
        for tag in sorted(wanted)[:5] + sorted(wanted)[-5:]:
            want = head_digest(source.address, TAG_REPO, tag)
            checks["kiln mirror"] &= head_digest(kiln_dest.address, f"mirror/{TAG_REPO}",
                                                 tag) == want
            checks["skopeo sync"] &= head_digest(sync_dest.address, f"sync/{short}", tag) == want

        index_config = work / "mirrors-index.yml"
        index_config.write_text("destination: ${REGISTRY}/mirror\nimages:\n"
                                f"  - {source.address}/{INDEX_REPO}:latest\n", encoding="utf-8")
        index_sync = work / "sync-index.yml"
        index_sync.write_text(f"{source.address}:\n  tls-verify: false\n  images:\n"
                              f"    {INDEX_REPO}: [latest]\n", encoding="utf-8")
        results += [
            measure(source, "changed child", "kiln mirror", "cold",
                    lambda: kiln_run(index_config, kiln_dest.address, work)),
            measure(source, "changed child", "skopeo sync", "cold",
                    lambda: sync_run(index_sync, f"{sync_dest.address}/sync")),
        ]
        with Seeder(source.address) as seeder:
            changed = seeder.index(INDEX_REPO, "latest", {**labels, "arm64": "b2"})
        results += [
            measure(source, "changed child", "kiln mirror", "1 child changed",
                    lambda: kiln_run(index_config, kiln_dest.address, work)),
            measure(source, "changed child", "skopeo sync", "1 child changed",
                    lambda: sync_run(index_sync, f"{sync_dest.address}/sync")),
            measure(source, "changed child", "kiln mirror", "up to date",
                    lambda: kiln_run(index_config, kiln_dest.address, work)),
            measure(source, "changed child", "skopeo sync", "up to date",
                    lambda: sync_run(index_sync, f"{sync_dest.address}/sync")),
        ]
        multi = INDEX_REPO.rsplit("/", 1)[-1]
        checks["kiln mirror"] &= head_digest(kiln_dest.address, f"mirror/{INDEX_REPO}",
                                             "latest") == changed.digest
        checks["skopeo sync"] &= head_digest(sync_dest.address, f"sync/{multi}",
                                             "latest") == changed.digest
        for child in changed.children:
            checks["kiln mirror"] &= head_digest(kiln_dest.address, f"mirror/{INDEX_REPO}",
                                                 child) == child
    finally:
        for server in servers:
            server.stop()
    return {
        "tags": len(tags), "semver_range": SEMVER_RANGE, "selected": len(wanted),
        "peer": f"skopeo {skopeo_version()} sync --src yaml --all --preserve-digests, {selector}",
        "peer_semver_supported": by_semver,
        "index_children": 4,
        "kiln_startup_seconds": kiln_startup(),
        "host": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores; all "
                "registries on 127.0.0.1",
        "results": [asdict(r) for r in results],
        "same_tags_and_digests": checks,
    }


# -- the report --------------------------------------------------------------------------------

def render(data: dict[str, Any]) -> str:
    """Markdown for the README (and the console), from the results file's data."""
    def table(scenario: str) -> list[str]:
        rows = ["| tool | run | manifest GETs (pulls) | manifest HEADs | tag lists | blob "
                "requests | all requests | seconds |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in data["results"]:
            if r["scenario"] == scenario:
                rows.append(f"| {r['tool']} | {r['run']} | {r['manifest_gets']} | "
                            f"{r['manifest_heads']} | {r['tag_lists']} | {r['blob_requests']} | "
                            f"{r['all_requests']} | {r['seconds']} |")
        return rows

    checks = data["same_tags_and_digests"]
    startup = data.get("kiln_startup_seconds")
    lines = [
        f"Requests seen by the source registry (standing in for Docker Hub, which counts manifest "
        f"GETs as pulls); {data['host']}. Peer: {data['peer']}.",
        "",
        f"**Tag set**: a repository of {data['tags']} tags, semver range `{data['semver_range']}` "
        f"({data['selected']} tags):",
        "",
        *table("tag set"),
        "",
        f"**Changed child**: a {data['index_children']}-arch manifest list, mirrored cold, then "
        "one child changes upstream (kiln's goal: 2 GETs, the index and the new child):",
        "",
        *table("changed child"),
        "",
        "Same tags and digests at both destinations (index digests included): "
        + ", ".join(f"{tool}: {'yes' if ok else 'NO'}" for tool, ok in checks.items()) + ".",
    ]
    if startup is not None:
        lines += ["", f"kiln's seconds include {startup} s of Python start-up (importing its "
                  "command line, measured alone); a cold kiln copy also starts one skopeo "
                  "process per image (4 at a time), the peer one process in all."]
    if not data.get("peer_semver_supported", True):
        lines += ["", "The installed skopeo predates `images-by-semver` (it ignores the key and "
                  "syncs nothing), so the peer selects the same tags with `images-by-tag-regex`; "
                  "either way skopeo lists the tags once and GETs every selected manifest on "
                  "every run."]
    return "\n".join(lines)


def write_readme(text: str, readme: Path = README) -> None:
    content = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if not pattern.search(content):
        raise SystemExit(f"{readme}: no {START} ... {END} section to replace")
    content = pattern.sub(lambda _: f"{START}\n{text}\n{END}", content)
    readme.write_text(content, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true",
                        help=f"write {RESULTS.relative_to(ROOT)} and the README section")
    parser.add_argument("--render", action="store_true",
                        help="only regenerate the README section from the results file")
    args = parser.parse_args()
    if args.render:
        data = json.loads(RESULTS.read_text(encoding="utf-8"))
        RENDERED.write_text(render(data) + "\n", encoding="utf-8")
        write_readme(render(data))
        return 0
    with tempfile.TemporaryDirectory(prefix="kiln-bench-mirror-") as tmp:
        data = run_benchmark(Path(tmp))
    text = render(data)
    print(text)
    if args.write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        RENDERED.write_text(text + "\n", encoding="utf-8")
        write_readme(text)
    return 0 if all(data["same_tags_and_digests"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
