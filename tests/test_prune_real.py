"""``invoke prune`` against real docker-registry instances (about 20 tags each), run as a user
runs it. Done means: every sibling tag and every digest a kept tag needs survive; what goes is
exactly the plan; a rerun changes nothing; bad input and a registry refusing deletes change
nothing. Request kinds come from the registry's own access log."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from helpers.fault_proxy import FaultProxy
from helpers.lifecycle import Seeder, exists, seed_pipelines, tags_of
from helpers.run import run_kiln
from kiln.local_registry import RegistryServer, registry_config
from kiln.referrers import cosign_tags, fallback_tag
from kiln.registry import media
from kiln.registry.client import RegistryClient
from kiln.registry.media import Manifest

pytestmark = pytest.mark.real


def env(host: str, **extra: str) -> dict[str, str]:
    return {"KILN_REGISTRY": host, "IMAGE_NAME": "app", **extra}


POLICY = ("--match", "p-*", "--match", "g-*", "--match", "mr-*", "--keep", "1",
          "--older-than", "5d", "--open-mr", "5")


def seed_repository(host: str) -> dict[str, Manifest]:
    """Pipelines 1-8 (p-/g-), 9 (a two-arch index), production/latest/a git tag/3 mr- tags,
    pipelines 1 and 8 signed (referrers fallback tag + cosign .sig)."""
    with Seeder(host) as seeder:
        made = {str(n): m for n, m in seed_pipelines(seeder, 8).items()}
        made["9"] = seed_pipelines(seeder, 1, first=9, step_days=0,
                                   arches=("amd64", "arm64"))[9]
        seeder.tag("latest", made["8"])
        seeder.tag("production", made["2"])
        seeder.tag("v1.0.0", made["3"])
        seeder.tag("mr-4", made["4"])  # a closed merge request
        seeder.tag("mr-5", made["5"])  # an open one
        seeder.tag("mr-6", made["6"])  # the newest mr- tag that is not open: kept by --keep 1
        for n in ("1", "8"):
            for i, artifact in enumerate(seeder.sign(made[n])):
                made[f"{n}-artifact-{i}"] = artifact
    return made


def test_prune_keeps_every_sibling_and_every_needed_digest(tmp_path: Path,
                                                           registry: RegistryServer) -> None:
    host = registry.address
    made = seed_repository(host)
    before = tags_of(host)
    assert len(before) >= 20

    # the dry run: the plan as a table, reads only
    mark = registry.log_mark()
    dry = run_kiln(tmp_path, "prune", *POLICY, "--dry-run", env=env(host))
    assert dry.returncode == 0, dry.stderr
    assert {r.method for r in registry.requests_since(mark)} <= {"GET", "HEAD"}
    assert tags_of(host) == before
    header = next(line for line in dry.stdout.splitlines() if line.startswith("TAG"))
    assert header.split() == ["TAG", "DIGEST", "AGE", "ACTION", "WHY"]
    rows = {line.split()[0]: line for line in dry.stdout.splitlines()[1:] if line.strip()}
    assert " remove " in rows["p-1"] and " keep " in rows["production"]
    assert "digest stays (also production)" in rows["p-2"]
    assert "open merge request" in rows["mr-5"]

    # the run
    mark = registry.log_mark()
    proc = run_kiln(tmp_path, "prune", *POLICY, "--json", env=env(host))
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["ok"] is True
    removed = {r["tag"] for r in document["results"] if r["action"] == "removed"}
    sig1 = [fallback_tag(made["1"].digest), cosign_tags(made["1"].digest)[0]]
    expected_removed = {*(f"{k}-{n}" for k in "pg" for n in range(1, 7)), "mr-4", *sig1}
    assert removed == expected_removed
    after = tags_of(host)
    assert set(after) == set(before) - expected_removed
    # every kept tag still points where it did
    assert all(after[tag] == before[tag] for tag in after)
    # digests: kept where a kept tag, index or image needs them, deleted otherwise
    assert exists(host, made["2"].digest) and exists(host, made["3"].digest)  # production, v1
    assert exists(host, made["5"].digest)  # mr-5, an open merge request
    assert exists(host, made["6"].digest)  # mr-6, the newest mr- tag
    for child in json.loads(made["9"].body)["manifests"]:  # the kept index's children
        assert exists(host, child["digest"])
    for n in ("1", "4"):
        assert not exists(host, made[n].digest), n
    for i in range(3):
        assert not exists(host, made[f"1-artifact-{i}"].digest)  # pipeline 1's signatures
        assert exists(host, made[f"8-artifact-{i}"].digest)  # pipeline 8's stay
    assert set(document["deleted_digests"]) >= {made["1"].digest, made["4"].digest}
    records = registry.requests_since(mark)
    assert {(r.method, r.kind) for r in records if r.method not in {"GET", "HEAD"}} <= {
        ("PUT", "manifest"), ("DELETE", "manifest"), ("POST", "upload"), ("PUT", "upload")}
    assert not any(r.kind == "blob" and r.method == "GET" and r.bytes > 10_000 for r in records)

    # a rerun converges: nothing more to remove, nothing written
    mark = registry.log_mark()
    again = run_kiln(tmp_path, "prune", *POLICY, env=env(host))
    assert again.returncode == 0, again.stderr
    assert {r.method for r in registry.requests_since(mark)} <= {"GET", "HEAD"}
    assert tags_of(host) == after


def test_prune_removes_a_sibling_alone(tmp_path: Path, registry: RegistryServer) -> None:
    """mr-4 shares its digest with p-4 and g-4, which stay: only mr-4 goes (throwaway)."""
    host = registry.address
    with Seeder(host) as seeder:
        made = seed_pipelines(seeder, 4, step_days=20)
        seeder.tag("mr-4", made[4])
    before = tags_of(host)
    proc = run_kiln(tmp_path, "prune", "--match", "mr-*", "--keep", "0", "--older-than", "0d",
                    env=env(host))
    assert proc.returncode == 0, proc.stderr
    after = tags_of(host)
    assert set(after) == set(before) - {"mr-4"}
    assert all(after[tag] == before[tag] for tag in after)
    assert exists(host, made[4].digest)


def test_prune_finishes_an_interrupted_removal(tmp_path: Path,
                                               registry: RegistryServer) -> None:
    host = registry.address
    with Seeder(host) as seeder:
        made = seed_pipelines(seeder, 2)
        seeder.tag("mr-3", made[2])
        leftover = Manifest.from_bytes(media.throwaway_manifest("mr-3:interrupted"),
                                       media.OCI_MANIFEST)
        seeder.tag("mr-3", leftover)  # as an interrupted stop-mr or prune leaves it
    proc = run_kiln(tmp_path, "prune", env=env(host))
    assert proc.returncode == 0, proc.stderr
    assert "leftover of an interrupted removal" in proc.stdout
    assert set(tags_of(host)) == {"p-1", "g-1", "p-2", "g-2"}
    assert not exists(host, leftover.digest)


def test_a_policy_removing_every_tag_is_refused(tmp_path: Path,
                                                 registry: RegistryServer) -> None:
    host = registry.address
    with Seeder(host) as seeder:
        seed_pipelines(seeder, 3, step_days=40)
    before = tags_of(host)
    mark = registry.log_mark()
    proc = run_kiln(tmp_path, "prune", "--keep", "0", "--older-than", "0d", env=env(host))
    assert proc.returncode == 2
    assert "would remove every tag" in proc.stderr and "nothing was removed" in proc.stderr
    assert {r.method for r in registry.requests_since(mark)} <= {"GET", "HEAD"}
    assert tags_of(host) == before


def test_a_bad_policy_in_pyproject_names_file_and_line(tmp_path: Path,
                                                       registry: RegistryServer) -> None:
    host = registry.address
    (tmp_path / "pyproject.toml").write_text(
        '[tool.kiln]\n\n[tool.kiln.images.app.prune]\nkeep = 3\nolder-than = "soon"\n')
    mark = registry.log_mark()
    proc = run_kiln(tmp_path, "prune", env=env(host))
    assert proc.returncode == 2
    assert "pyproject.toml:5:" in proc.stderr and "older-than" in proc.stderr
    assert registry.requests_since(mark) == []


def test_a_registry_refusing_deletes_changes_nothing(tmp_path: Path) -> None:
    storage = registry_config(tmp_path / "data", "127.0.0.1:0")["storage"]
    assert isinstance(storage, dict)
    storage = {**storage, "delete": {"enabled": False}}
    with RegistryServer(tmp_path / "nodelete", extra_config={"storage": storage}) as server:
        host = server.address
        with Seeder(host) as seeder:
            seed_pipelines(seeder, 14, step_days=10)
        before = tags_of(host)
        mark = server.log_mark()
        proc = run_kiln(tmp_path, "prune", env=env(host))
        assert proc.returncode == 2, proc.stderr
        assert "refuses deletes" in proc.stderr and "changed nothing" in proc.stderr
        records = server.requests_since(mark)
        assert {r.method for r in records} <= {"GET", "HEAD", "DELETE"}
        assert [r.status for r in records if r.method == "DELETE"] == [405]
        assert tags_of(host) == before


def test_half_done_deletes_are_cleared(tmp_path: Path, registry: RegistryServer) -> None:
    """distribution's half-done DELETE (manifest gone, tags still listed, HTTP 500) on the
    first deletes: prune clears the tags left pointing at nothing, now or on the next run."""
    host = registry.address
    with Seeder(host) as seeder:
        seed_pipelines(seeder, 14, step_days=10)
    before = tags_of(host)
    probe = "sha256:" + "0" * 64
    lock = threading.Lock()
    hits: list[str] = []

    def rule(method: str, path: str, attempt: int) -> str | None:
        with lock:
            if method == "DELETE" and "/manifests/sha256:" in path and probe not in path \
                    and attempt == 1 and len(hits) < 2:
                hits.append(path)
                return "delete-keeps-tag"
        return None

    with FaultProxy(host, rule, storage=registry.data_dir) as proxy:
        proc = run_kiln(tmp_path, "prune", env=env(proxy.address))
    assert proc.returncode == 0, proc.stderr
    assert len(hits) == 2
    expected = {f"{k}-{n}" for k in "pg" for n in range(5, 15)}  # the newest 10 pipelines
    after = tags_of(host)
    assert set(after) == expected and all(after[t] == before[t] for t in after)
    # every delete half-done: p-3 is left listed, pointing at nothing; the next prune clears it
    with Seeder(host) as seeder:
        seeder.tag("p-3", seeder.image("stray", days_old=300))
    with FaultProxy(host, lambda m, p, a: "delete-keeps-tag" if m == "DELETE" and
                    probe not in p else None, storage=registry.data_dir) as proxy:
        left = run_kiln(tmp_path, "prune", env=env(proxy.address))
    assert left.returncode == 0, left.stderr
    assert "still listed" in left.stderr
    with RegistryClient(host) as client:
        assert "p-3" in client.list_tags("app") and client.head_manifest("app", "p-3") is None
    again = run_kiln(tmp_path, "prune", env=env(host))
    assert again.returncode == 0, again.stderr
    assert "points at nothing (a half-done delete)" in again.stdout
    assert set(tags_of(host)) == expected


def test_prune_covers_every_destination(tmp_path: Path, registry: RegistryServer) -> None:
    host = registry.address
    with RegistryServer(tmp_path / "second") as second:
        for where, repo in ((host, "app"), (second.address, "team/app")):
            with Seeder(where, repo) as seeder:
                seed_pipelines(seeder, 4, step_days=40)
        (tmp_path / "pyproject.toml").write_text(
            f'[tool.kiln.images.app]\ndestinations = ["{host}", "{second.address}/team"]\n'
            '[tool.kiln.images.app.prune]\nkeep = 1\n')
        proc = run_kiln(tmp_path, "prune", env=env(host))
        assert proc.returncode == 0, proc.stderr
        assert set(tags_of(host)) == {"p-4", "g-4"}
        assert set(tags_of(second.address, "team/app")) == {"p-4", "g-4"}
        assert f"prune {second.address}/team/app: removed 6 of 8 tags" in proc.stderr
