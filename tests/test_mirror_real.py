"""``mirror`` against real registries with real skopeo: one registry stands in for Docker Hub,
another is ours. Request counts come from the source registry's access log."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_tool
from helpers.mirror_support import (
    Images,
    RateLimitCounter,
    RegistryProxy,
    head_digest,
)
from helpers.registry_seed import DOCKER_MANIFEST, Seeder
from kiln.local_registry import AccessRecord, RegistryServer, local_registry_status
from kiln.mirror.run import COPIED, RETAGGED, SKIPPED, MirrorFailed, MirrorReport, mirror
from kiln.registry.client import RegistryClient
from kiln.settings import Settings

pytestmark = pytest.mark.real
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    """Small scratch images, built once per session in a buildah storage of their own (vfs, so
    it cannot clash with the driver other tests' storage was created with)."""
    require_tool("buildah", "buildah")
    require_tool("skopeo", "skopeo")
    base = tmp_path_factory.mktemp("mirror-images")
    built = Images(base / "root", base / "runroot", base / "files")
    built.image("kiln-mirror-alpha", "alpha v1")
    built.image("kiln-mirror-alpha2", "alpha v2")
    built.image("kiln-mirror-beta", "beta", layers=3)
    built.image("kiln-mirror-multi-amd64", "multi amd64", "amd64")
    built.image("kiln-mirror-multi-arm64", "multi arm64", "arm64")
    return built


@pytest.fixture
def source(registry: RegistryServer) -> RegistryServer:
    """The registry standing in for Docker Hub."""
    return registry


@pytest.fixture
def dest(tmp_path: Path) -> Iterator[RegistryServer]:
    """Our registry (the mirror's destination)."""
    require_tool("docker-registry", "docker-registry")
    server = RegistryServer(tmp_path / "dest-registry")
    server.start()
    yield server
    server.stop()


def seed(images: Images, source: str, *, multi: bool = True) -> None:
    images.push("localhost/kiln-mirror-alpha", f"{source}/library/alpha:1")
    images.push("localhost/kiln-mirror-beta", f"{source}/team/beta:stable")
    if multi:
        images.push_multi("kiln-mirror-multi", ["localhost/kiln-mirror-multi-amd64",
                                                "localhost/kiln-mirror-multi-arm64"],
                          f"{source}/library/multi:latest")


def write_config(tmp_path: Path, source: str, extra: str = "", *,
                 sources: tuple[str, ...] = ("library/alpha:1", "team/beta:stable",
                                             "library/multi:latest")) -> Path:
    lines = ["destination: ${REGISTRY}/mirror", extra.rstrip(), "images:"]
    lines += [f"  - source: {source}/{name}" for name in sources]
    path = tmp_path / "mirrors.yml"
    path.write_text("\n".join(line for line in lines if line) + "\n", encoding="utf-8")
    return path


def settings_for(tmp_path: Path, dest: RegistryServer) -> Settings:
    return Settings.resolve(tmp_path, {}, {}, {"registry": dest.address})


def run(tmp_path: Path, dest: RegistryServer, config: Path, **kwargs: object) -> MirrorReport:
    return mirror(settings_for(tmp_path, dest), config=config, live=False, **kwargs)  # type: ignore[arg-type]


def run_failing(tmp_path: Path, dest: RegistryServer, config: Path,
                **kwargs: object) -> tuple[MirrorFailed, str]:
    with pytest.raises(MirrorFailed) as info:
        run(tmp_path, dest, config, **kwargs)
    return info.value, str(info.value)


def manifest_gets(records: list[AccessRecord]) -> list[AccessRecord]:
    return [r for r in records if r.kind == "manifest" and r.method == "GET"]


def blobs(records: list[AccessRecord]) -> list[AccessRecord]:
    return [r for r in records if r.kind == "blob"]


def heads(records: list[AccessRecord]) -> list[AccessRecord]:
    return [r for r in records if r.kind == "manifest" and r.method == "HEAD"]


# ---------------------------------------------------------------------------------------------

def test_cold_mirror_copies_everything_with_the_same_digests(
        images: Images, source: RegistryServer, dest: RegistryServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    seed(images, source.address)
    config = write_config(tmp_path, source.address)
    report = run(tmp_path, dest, config)
    assert [o.status for o in report.outcomes] == [COPIED] * 3
    for repo, tag in (("library/alpha", "1"), ("team/beta", "stable"),
                      ("library/multi", "latest")):
        digest = head_digest(source.address, repo, tag)
        assert digest is not None
        assert head_digest(dest.address, f"mirror/{repo}", tag) == digest
        # a reference pinned by digest at the mirror works
        assert head_digest(dest.address, f"mirror/{repo}", digest) == digest
    out = capsys.readouterr().out
    assert "mirror summary: 3 image(s): 3 copied" in out


def test_multi_arch_source_keeps_index_and_child_digests(
        images: Images, source: RegistryServer, dest: RegistryServer, tmp_path: Path) -> None:
    seed(images, source.address)
    config = write_config(tmp_path, source.address, sources=("library/multi:latest",))
    run(tmp_path, dest, config)
    import json
    import urllib.request

    request = urllib.request.Request(
        f"http://{source.address}/v2/library/multi/manifests/latest",
        headers={"Accept": "application/vnd.docker.distribution.manifest.list.v2+json"})
    with urllib.request.urlopen(request) as response:
        index = json.loads(response.read())
    children = [m["digest"] for m in index["manifests"]]
    assert {m["platform"]["architecture"] for m in index["manifests"]} == {"amd64", "arm64"}
    assert head_digest(dest.address, "mirror/library/multi", "latest") == \
        head_digest(source.address, "library/multi", "latest")
    for child in children:
        assert head_digest(dest.address, "mirror/library/multi", child) == child


def test_up_to_date_mirror_costs_only_heads(
        images: Images, source: RegistryServer, dest: RegistryServer, tmp_path: Path) -> None:
    seed(images, source.address)
    config = write_config(tmp_path, source.address)
    run(tmp_path, dest, config)
    source_mark, dest_mark = source.log_mark(), dest.log_mark()
    report = run(tmp_path, dest, config)
    assert [o.status for o in report.outcomes] == [SKIPPED] * 3
    on_source = source.requests_since(source_mark)
    assert manifest_gets(on_source) == []
    assert blobs(on_source) == []
    assert len(heads(on_source)) == 3  # one HEAD per image
    assert {r.kind for r in on_source} <= {"manifest", "base"}
    on_dest = dest.requests_since(dest_mark)
    assert manifest_gets(on_dest) == [] and blobs(on_dest) == []
    assert not [r for r in on_dest if r.method in {"PUT", "POST", "PATCH", "DELETE"}]


def test_dry_run_prints_plan_and_costs_only_heads(
        images: Images, source: RegistryServer, dest: RegistryServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    seed(images, source.address, multi=False)
    config = write_config(tmp_path, source.address,
                          sources=("library/alpha:1", "team/beta:stable", "library/gone:1"))
    run(tmp_path, dest, config, only=["alpha*"])  # alpha is mirrored already
    mark = source.log_mark()
    _, message = run_failing(tmp_path, dest, config, dry_run=True)
    assert "1 of 3 image(s) would fail" in message
    out = capsys.readouterr().out
    assert "mirror plan (dry run: HEAD requests only)" in out
    assert "skip" in out and "up to date" in out
    assert "copy" in out and "not at the destination yet" in out
    assert "ERROR" in out and "library/gone:1 not found (404)" in out
    on_source = source.requests_since(mark)
    assert manifest_gets(on_source) == [] and blobs(on_source) == []
    assert head_digest(dest.address, "mirror/team/beta", "stable") is None  # nothing copied


def test_only_mirrors_the_matching_images(
        images: Images, source: RegistryServer, dest: RegistryServer, tmp_path: Path) -> None:
    seed(images, source.address, multi=False)
    config = write_config(tmp_path, source.address,
                          sources=("library/alpha:1", "team/beta:stable"))
    report = run(tmp_path, dest, config, only=["beta:*"])
    assert [str(o.image.source) for o in report.outcomes] == \
        [f"{source.address}/team/beta:stable"]
    assert head_digest(dest.address, "mirror/library/alpha", "1") is None


def test_upstream_tag_moved_is_copied_again(
        images: Images, source: RegistryServer, dest: RegistryServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    seed(images, source.address, multi=False)
    config = write_config(tmp_path, source.address, sources=("library/alpha:1",))
    run(tmp_path, dest, config)
    old = head_digest(dest.address, "mirror/library/alpha", "1")
    images.push("localhost/kiln-mirror-alpha2", f"{source.address}/library/alpha:1")
    new = head_digest(source.address, "library/alpha", "1")
    assert new != old
    capsys.readouterr()
    report = run(tmp_path, dest, config)
    assert report.outcomes[0].status == COPIED
    assert "upstream moved" in report.outcomes[0].message
    assert head_digest(dest.address, "mirror/library/alpha", "1") == new
    # the old digest is still there: references pinned to it keep working
    assert head_digest(dest.address, "mirror/library/alpha", str(old)) == old


def test_pinned_digest_is_copied_and_the_moved_tag_reported(
        images: Images, source: RegistryServer, dest: RegistryServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    seed(images, source.address, multi=False)
    pinned = head_digest(source.address, "library/alpha", "1")
    images.push("localhost/kiln-mirror-alpha2", f"{source.address}/library/alpha:1")
    moved = head_digest(source.address, "library/alpha", "1")
    assert pinned != moved
    config = write_config(tmp_path, source.address, sources=(f"library/alpha:1@{pinned}",))
    report = run(tmp_path, dest, config)
    assert report.outcomes[0].status == COPIED
    assert head_digest(dest.address, "mirror/library/alpha", "1") == pinned  # tagged too
    out = capsys.readouterr().out
    assert "warnings:" in out and "now points at" in out and "pinned" in out
    # rerun: up to date with the pin (HEADs only), the warning stays
    mark = source.log_mark()
    report = run(tmp_path, dest, config)
    assert report.outcomes[0].status == SKIPPED and report.outcomes[0].warnings
    assert manifest_gets(source.requests_since(mark)) == []


def test_one_broken_source_does_not_stop_the_others(
        images: Images, source: RegistryServer, dest: RegistryServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    seed(images, source.address, multi=False)
    config = write_config(tmp_path, source.address, "jobs: 1",
                          sources=("library/alpha:1", "library/missing:1", "team/beta:stable"))
    error, message = run_failing(tmp_path, dest, config)
    assert error.exit_code == 2
    assert f"1 of 3 image(s) failed: {source.address}/library/missing:1" in message
    out = capsys.readouterr().out
    assert "2 copied, 1 failed" in out
    for name in ("library/alpha:1", "library/missing:1", "team/beta:stable"):
        assert f"{source.address}/{name}" in out
    assert head_digest(dest.address, "mirror/library/alpha", "1") is not None
    assert head_digest(dest.address, "mirror/team/beta", "stable") is not None


def test_interrupted_copy_then_rerun_converges(
        images: Images, source: RegistryServer, dest: RegistryServer, tmp_path: Path) -> None:
    """The destination fails the final manifest-list PUT (after the children and blobs landed)
    on every one of the client's attempts, so nothing is tagged and the run fails (transient,
    exit 4); the rerun finds the children there and fetches only the index (1 pull)."""
    seed(images, source.address)
    failed: list[str] = []

    def fail_index_put(method: str, path: str) -> tuple[int, bytes] | None:
        if method == "PUT" and path.endswith("/manifests/latest") and len(failed) < 5:
            failed.append(path)
            return 500, b"simulated outage"
        return None

    with RegistryProxy(dest.address, intercept=fail_index_put) as proxy:
        config = write_config(tmp_path, source.address, "retries: 0",
                              sources=("library/multi:latest",))
        settings = Settings.resolve(tmp_path, {}, {}, {"registry": proxy.address})
        with pytest.raises(MirrorFailed) as info:
            mirror(settings, config=config, live=False)
        assert info.value.exit_code == 4
        assert len(failed) == 5, "the fault was not triggered on every attempt"
        assert head_digest(dest.address, "mirror/library/multi", "latest") is None
        mark = source.log_mark()
        report = mirror(settings, config=config, live=False)
        assert report.outcomes[0].status == COPIED
        assert "0 of 2 child manifest(s) fetched, 2 at the destination already" in \
            report.outcomes[0].message
    assert len(manifest_gets(source.requests_since(mark))) == 1  # the index only
    assert head_digest(dest.address, "mirror/library/multi", "latest") == \
        head_digest(source.address, "library/multi", "latest")


def test_ratelimit_floor_stops_copies_with_a_clear_message(
        images: Images, source: RegistryServer, dest: RegistryServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Docker Hub accounting simulated by a proxy: 3 pulls left, floor 2. alpha (1 pull) is
    copied (3 - 1 >= 2); beta then would cross the floor (2 - 1 < 2) and is not started."""
    seed(images, source.address, multi=False)
    counter = RateLimitCounter(remaining=3, limit=100)
    with RegistryProxy(source.address, extra_headers=counter) as hub:
        config = write_config(tmp_path, hub.address, "jobs: 1\nratelimit:\n  floor: 2",
                              sources=("library/alpha:1", "team/beta:stable"))
        error, message = run_failing(tmp_path, dest, config)
    assert error.exit_code == 4
    out = capsys.readouterr().out
    assert "1 copied, 1 failed" in out
    assert "rate limit: 2 of 100 per 21600s pulls remaining" in out
    assert "the floor is 2" in out and "stopped copying from" in out
    assert counter.gets == 1  # only alpha's manifest was fetched
    assert head_digest(dest.address, "mirror/team/beta", "stable") is None
    assert "1 of 2 image(s) failed" in message


def test_ratelimit_waits_with_free_heads_then_copies(
        images: Images, source: RegistryServer, dest: RegistryServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """No pulls left at first; the budget comes back after a few (free) HEAD re-checks."""
    seed(images, source.address, multi=False)
    counter = RateLimitCounter(remaining=0, limit=100, refill_after_heads=3)
    with RegistryProxy(source.address, extra_headers=counter) as hub:
        config = write_config(
            tmp_path, hub.address,
            "ratelimit:\n  floor: 5\n  max-wait: 600\n  poll-interval: 0.01",
            sources=("library/alpha:1",))
        report = run(tmp_path, dest, config)
    assert report.outcomes[0].status == COPIED
    assert counter.heads >= 3 and counter.gets == 1
    assert "waiting" in capsys.readouterr().err


def test_cli_invalid_config_and_failure_exit_codes(
        images: Images, source: RegistryServer, dest: RegistryServer, tmp_path: Path) -> None:
    """Through the real ``kiln`` command: an invalid file names line:column (exit 2); a run
    with a broken image exits non-zero after mirroring the rest and printing the summary."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "KILN_REGISTRY": dest.address}
    env.pop("CI", None)
    env.pop("GITLAB_CI", None)
    bad = tmp_path / "bad.yml"
    bad.write_text("images:\n  - source: library/alpha:1\n    destnation: x.example.com/a\n",
                   encoding="utf-8")
    command = [sys.executable, "-c", "from kiln.cli import main; main()", "mirror"]
    done = subprocess.run([*command, "--config", str(bad)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr
    assert f"{bad}:3:5: unknown key 'destnation' in image entry" in done.stderr

    seed(images, source.address, multi=False)
    config = write_config(tmp_path, source.address,
                          sources=("library/alpha:1", "library/missing:1"))
    done = subprocess.run([*command, "--config", str(config), "--jobs", "2"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr
    assert "1 copied, 1 failed" in done.stdout
    assert "1 of 2 image(s) failed" in done.stderr
    assert head_digest(dest.address, "mirror/library/alpha", "1") is not None


# -- tag sets, retags and partial index updates (images written over HTTP: no buildah) ---------

RANGE_TAGS = [f"{major}.{minor}.{patch}" for major in (15, 16, 17) for minor in (0, 1)
              for patch in range(5)]  # 30 semver tags
ODD_TAGS = ["latest", "16", "16.1", "16.1.0-rc.1", "16-alpine"]


@pytest.fixture
def tagged(source: RegistryServer) -> dict[str, str]:
    """``library/node`` at the source with 30 semver tags and 5 that are not (or pre-releases);
    tag -> digest."""
    digests = {}
    with Seeder(source.address) as seeder:
        for tag in RANGE_TAGS + ODD_TAGS:
            digests[tag] = seeder.image("library/node", tag).digest
    return digests


def tag_set_config(tmp_path: Path, source: str, rule: str, extra: str = "",
                   repo: str = "library/node") -> Path:
    path = tmp_path / "mirrors.yml"
    path.write_text(f"destination: ${{REGISTRY}}/mirror\n{extra}images:\n"
                    f"  - source: {source}/{repo}\n    tags: {rule}\n", encoding="utf-8")
    return path


def dest_tags(dest: RegistryServer, repo: str = "mirror/library/node") -> set[str]:
    with RegistryClient(dest.address) as client:
        return set(client.list_tags(repo))


def tag_lists(records: list[AccessRecord]) -> list[AccessRecord]:
    return [r for r in records if r.kind == "tags"]


def test_tag_set_semver_range_then_up_to_date(
        tagged: dict[str, str], source: RegistryServer, dest: RegistryServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = tag_set_config(tmp_path, source.address, "{semver: '>=16 <17'}")
    mark = source.log_mark()
    report = run(tmp_path, dest, config)
    wanted = {t for t in RANGE_TAGS if t.startswith("16.")}
    assert {o.image.tag for o in report.outcomes} == wanted
    assert {o.status for o in report.outcomes} == {COPIED}
    assert dest_tags(dest) == wanted  # not 16, 16.1, 16-alpine, 16.1.0-rc.1
    for tag in wanted:
        assert head_digest(dest.address, "mirror/library/node", tag) == tagged[tag]
    on_source = source.requests_since(mark)
    assert len(tag_lists(on_source)) == 1  # one listing, no pull
    assert len(manifest_gets(on_source)) == len(wanted)  # one pull per selected image
    assert report.pulls() == {source.address: len(wanted)}
    out = capsys.readouterr().out
    assert f"{source.address}: 10 pulls spent (manifest GETs)" in out
    assert "10 of 35 tags (semver '>=16 <17')" in out

    mark = source.log_mark()
    report = run(tmp_path, dest, config)
    assert {o.status for o in report.outcomes} == {SKIPPED}
    on_source = source.requests_since(mark)
    assert manifest_gets(on_source) == [] and blobs(on_source) == []
    assert len(heads(on_source)) == len(wanted)
    assert f"{source.address}: 0 pulls spent (manifest GETs)" in capsys.readouterr().out


def test_tag_set_regex_and_exclude(
        tagged: dict[str, str], source: RegistryServer, dest: RegistryServer,
        tmp_path: Path) -> None:
    config = tag_set_config(tmp_path, source.address,
                            "{regex: ['^15\\.1\\.', '^latest$'], exclude: '\\.[34]$'}")
    run(tmp_path, dest, config)
    assert dest_tags(dest) == {"15.1.0", "15.1.1", "15.1.2", "latest"}


def test_tag_set_newest_by_semver_and_by_list_order(
        tagged: dict[str, str], source: RegistryServer, dest: RegistryServer,
        tmp_path: Path) -> None:
    config = tag_set_config(tmp_path, source.address, "{semver: '<17', newest: 3}")
    run(tmp_path, dest, config)
    assert dest_tags(dest) == {"16.1.4", "16.1.3", "16.1.2"}
    # not every candidate is a version: the last 2 of the registry's own listing order
    with RegistryClient(source.address) as client:
        listing = client.list_tags("library/node")
    expected = [t for t in listing if t.startswith("16")][-2:]
    config = tag_set_config(tmp_path, source.address, "{regex: '^16', newest: 2}")
    report = run(tmp_path, dest, config, dry_run=True)
    assert sorted(o.image.tag for o in report.outcomes) == sorted(expected)
    assert "tag list order" in report.outcomes[0].image.selected_by


def test_tag_set_whole_repository_and_alias_tags_are_retagged(
        source: RegistryServer, dest: RegistryServer, tmp_path: Path) -> None:
    """``tags: all``; two tags of one digest cost one pull: the second is a manifest PUT of the
    destination's own copy (retag), not a copy."""
    with Seeder(source.address) as seeder:
        first = seeder.image("team/tool", "1.0.0", label="tool 1.0.0")
        seeder.manifest("team/tool", "stable", seeder.image_body("team/tool", "tool 1.0.0"),
                        DOCKER_MANIFEST)
        seeder.image("team/tool", "edge", label="tool edge")
    config = tag_set_config(tmp_path, source.address, "all", "jobs: 1\n", repo="team/tool")
    mark = source.log_mark()
    report = run(tmp_path, dest, config)
    statuses = sorted(o.status for o in report.outcomes)
    assert statuses == [COPIED, COPIED, RETAGGED]
    assert len(manifest_gets(source.requests_since(mark))) == 2
    assert dest_tags(dest, "mirror/team/tool") == {"1.0.0", "stable", "edge"}
    assert head_digest(dest.address, "mirror/team/tool", "stable") == first.digest
    assert report.pulls() == {source.address: 2}


def test_pinned_digest_already_at_the_destination_is_tagged_without_a_pull(
        tagged: dict[str, str], source: RegistryServer, dest: RegistryServer,
        tmp_path: Path) -> None:
    run(tmp_path, dest, write_config(tmp_path, source.address, sources=("library/node:16.0.0",)))
    pin = tagged["16.0.0"]
    config = write_config(tmp_path, source.address, sources=(f"library/node:lts@{pin}",))
    mark, dest_mark = source.log_mark(), dest.log_mark()
    report = run(tmp_path, dest, config)
    assert report.outcomes[0].status == RETAGGED
    assert "is in the destination repository already" in report.outcomes[0].message
    assert manifest_gets(source.requests_since(mark)) == []
    assert head_digest(dest.address, "mirror/library/node", "lts") == pin
    writes = [r for r in dest.requests_since(dest_mark) if r.method in {"PUT", "POST", "PATCH"}]
    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in writes] == [("PUT", "lts")]


def test_changed_child_of_an_index_costs_two_pulls(
        source: RegistryServer, dest: RegistryServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A 4-arch index mirrored cold (1 + 4 GETs), then one child changes upstream: the index and
    the new child are fetched (2 GETs, counted in the source's access log); the index lands
    byte for byte (same digest), the 3 old children are not fetched again."""
    labels = {"amd64": "a1", "arm64": "b1", "arm": "c1", "ppc64le": "d1"}
    with Seeder(source.address) as seeder:
        cold = seeder.index("library/multi4", "latest", labels)
    config = write_config(tmp_path, source.address, sources=("library/multi4:latest",))
    mark = source.log_mark()
    run(tmp_path, dest, config)
    assert len(manifest_gets(source.requests_since(mark))) == 5
    with Seeder(source.address) as seeder:
        changed = seeder.index("library/multi4", "latest", {**labels, "arm64": "b2"})
    new_child = (set(changed.children) - set(cold.children)).pop()
    capsys.readouterr()
    mark = source.log_mark()
    report = run(tmp_path, dest, config)
    gets = manifest_gets(source.requests_since(mark))
    assert sorted(r.path.rsplit("/", 1)[-1] for r in gets) == sorted([changed.digest, new_child])
    assert report.outcomes[0].status == COPIED and report.pulls() == {source.address: 2}
    assert "1 of 4 child manifest(s) fetched, 3 at the destination already" in \
        report.outcomes[0].message
    assert f"{source.address}: 2 pulls spent (manifest GETs)" in capsys.readouterr().out
    assert head_digest(dest.address, "mirror/library/multi4", "latest") == changed.digest
    for child in changed.children:
        assert head_digest(dest.address, "mirror/library/multi4", child) == child


def test_tag_set_dry_run_shows_rules_and_reasons(
        tagged: dict[str, str], source: RegistryServer, dest: RegistryServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = tag_set_config(tmp_path, source.address, "{semver: '>=16 <17', newest: 2}")
    with config.open("a", encoding="utf-8") as handle:  # and a repository that does not exist
        handle.write(f"  - source: {source.address}/library/nothing\n    tags: all\n")
    mark = source.log_mark()
    _, message = run_failing(tmp_path, dest, config, dry_run=True)
    assert f"1 of 3 image(s) would fail: {source.address}/library/nothing" in message
    out = capsys.readouterr().out
    assert "mirror plan (dry run: HEAD requests and tag lists only): 3 image(s): 2 would copy, " \
           "1 failed" in out
    assert f"{source.address}/library/node (line 3): 2 of 35 tags" in out
    assert "library/nothing has no tags (does the repository exist?)" in out
    assert "+ 16.1.4: in semver range '>=16 <17'; newest 2 by semver order (#1)" in out
    assert "+ 16.1.3: in semver range '>=16 <17'; newest 2 by semver order (#2)" in out
    assert "not a semver version: " in out and "outside the semver range" in out
    assert "older than the newest 2 by semver order" in out and "pre-release" in out
    on_source = source.requests_since(mark)
    assert manifest_gets(on_source) == [] and blobs(on_source) == []
    assert dest_tags(dest) == set()


def test_tag_set_bad_rules_exit_2_with_position_and_write_nothing(
        tagged: dict[str, str], source: RegistryServer, dest: RegistryServer,
        tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "KILN_REGISTRY": dest.address}
    for name in ("CI", "GITLAB_CI"):
        env.pop(name, None)
    command = [sys.executable, "-c", "from kiln.cli import main; main()", "mirror", "--config"]
    cases = {
        # the column of the unbalanced '(' itself
        "{regex: '^16\\.(x'}": ":4:25: tags.regex: regex '^16\\\\.(x' does not compile",
        "{semver: '>=16 <<17'}": ":4:20: tags.semver: semver range '>=16 <<17' does not parse",
        "{newest: 0}": ":4:20: tags.newest: newest must be 1 or more, not 0",
    }
    mark = source.log_mark()
    for rule, expected in cases.items():
        config = tag_set_config(tmp_path, source.address, rule)
        done = subprocess.run([*command, str(config)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, check=False)
        assert done.returncode == 2, done.stderr
        assert f"{config}{expected}" in done.stderr
    assert source.requests_since(mark) == []  # nothing listed, nothing copied
    assert dest_tags(dest) == set()


def test_explicit_destinations_start_no_embedded_registry(
        tagged: dict[str, str], source: RegistryServer, dest: RegistryServer,
        tmp_path: Path) -> None:
    """No registry setting and every destination given: nothing starts in the project folder
    (before, ``mirror -c FILE`` started the embedded registry here and left it running)."""
    config = tmp_path / "explicit.yml"
    config.write_text(f"images:\n  - source: {source.address}/library/node:16.0.0\n"
                      f"    destination: {dest.address}/elsewhere/node\n", encoding="utf-8")
    settings = Settings.resolve(tmp_path, {}, {}, {})
    report = mirror(settings, config=config, live=False)
    assert report.outcomes[0].status == COPIED
    assert local_registry_status(settings.state_dir) is None
    assert not (settings.state_dir / "registry").exists()
    assert head_digest(dest.address, "elsewhere/node", "16.0.0") == tagged["16.0.0"]
