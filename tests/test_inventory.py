"""``invoke tags`` (kiln.inventory): the table and the JSON made from a repository's reading,
unit-tested on plain values, then the task itself against a real docker-registry."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from helpers.lifecycle import Seeder, seed_pipelines
from helpers.run import run_kiln
from kiln.inventory import format_table, human_size, parse_created, rows, short_tag, table
from kiln.local_registry import RegistryServer
from kiln.referrers import cosign_tags
from kiln.retention import ImageFacts, RepositoryState

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def test_created_times() -> None:
    assert parse_created("2024-01-01T00:00:00Z") == datetime(2024, 1, 1, tzinfo=UTC)
    nanos = parse_created("2024-01-01T10:00:00.123456789+02:00")
    assert nanos is not None and nanos.microsecond == 123456
    assert nanos.astimezone(UTC).hour == 8
    assert parse_created("2024-01-01T00:00:00") == datetime(2024, 1, 1, tzinfo=UTC)
    for bad in (None, "", "yesterday", 17):
        assert parse_created(bad) is None


def test_rows_group_tags_by_digest_newest_first() -> None:
    state = RepositoryState("reg/app", {"p-1": D1, "g-1": D1, "latest": D2, "p-2": D2}, {
        D1: ImageFacts(D1, "m", datetime(2024, 1, 1, tzinfo=UTC), 2048, ("amd64",)),
        D2: ImageFacts(D2, "i", datetime(2024, 2, 1, tzinfo=UTC), 5 * 1024 * 1024,
                       ("amd64", "arm64/v8")),
    })
    assert [r.tags for r in rows(state)] == [("latest", "p-2"), ("g-1", "p-1")]
    lines = format_table(table(state)).splitlines()
    assert lines[0].split() == ["TAGS", "DIGEST", "ARCH", "CREATED", "SIZE"]
    assert lines[1].startswith("latest, p-2  sha256:222222222222")
    assert "amd64, arm64/v8" in lines[1] and "2024-02-01 00:00" in lines[1]
    assert lines[1].endswith("5.0 MB") and lines[2].endswith("2.0 KB")
    assert human_size(10) == "10 B"


def test_artifact_tags_are_shortened_in_tables_only() -> None:
    assert short_tag(cosign_tags(D1)[0]) == "sha256-111111111111...sig"
    assert short_tag("sha256-" + "1" * 64) == "sha256-111111111111..."
    assert short_tag("p-1") == "p-1" and short_tag("v1.2.3") == "v1.2.3"


@pytest.mark.real
def test_tags_task_against_a_real_registry(tmp_path: Path, registry: RegistryServer) -> None:
    host = registry.address
    with Seeder(host) as seeder:
        seed_pipelines(seeder, 2)
        index = seed_pipelines(seeder, 1, first=3, arches=("amd64", "arm64"))[3]
        seeder.tag("latest", index)
        seeder.sign(index)
    env = {"KILN_REGISTRY": host}
    proc = run_kiln(tmp_path, "tags", "--image", "app", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{host}/app" and lines[1].split()[0] == "TAGS"
    top = next(line for line in lines if line.startswith("g-3, latest, p-3 "))
    assert "amd64, arm64" in top
    mark = registry.log_mark()
    proc = run_kiln(tmp_path, "tags", "--image", "app", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert {r.method for r in registry.requests_since(mark)} <= {"GET", "HEAD"}
    document = json.loads(proc.stdout)
    by_tags = {tuple(r["tags"]): r for r in document["results"]}
    assert by_tags[("g-3", "latest", "p-3")]["digest"] == index.digest
    assert by_tags[("g-3", "latest", "p-3")]["architectures"] == ["amd64", "arm64"]
    assert by_tags[("p-3-amd64",)]["architectures"] == ["amd64"]
    assert by_tags[("g-1", "p-1")]["created"] and by_tags[("g-1", "p-1")]["size"] > 0
    assert (cosign_tags(index.digest)[0],) in by_tags
    # an unknown image: an empty repository, an empty table
    proc = run_kiln(tmp_path, "tags", "--image", "nothing", env=env)
    assert proc.returncode == 0 and proc.stdout.splitlines()[1].split()[0] == "TAGS"
