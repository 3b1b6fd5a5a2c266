"""Mirror planning, rate-limit gating, selection and orchestration (pure; fakes for I/O edges).

The real-registry behaviour is in test_mirror_real.py; here every rule is pinned down without
processes (``no_subprocess``).
"""

from __future__ import annotations

import threading

import pytest

from helpers.clock import FakeClock
from kiln.errors import InputError, RegistryTransientError
from kiln.mirror.config import MirrorImage, RateLimitPolicy, parse_config
from kiln.mirror.plan import Action, ProbeError, estimated_pulls, plan_image
from kiln.mirror.ratelimit import RateLimitGate, RateLimitStop
from kiln.mirror.run import (
    COPIED,
    FAILED,
    SKIPPED,
    WOULD_COPY,
    WOULD_SKIP,
    failure_of,
    format_report,
    run_mirror,
    select,
)
from kiln.registry.media import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, ManifestInfo, RateLimit
from kiln.registry.reference import ImageRef
from kiln.skopeo import CopyRateLimited

pytestmark = pytest.mark.usefixtures("no_subprocess")

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64


def images(text: str) -> tuple[MirrorImage, ...]:
    return parse_config(text, "mirrors.yml", {"REGISTRY": "dst.example.com"}).images


def head(digest: str, media_type: str = DOCKER_MANIFEST, size: int = 500,
         remaining: int | None = None) -> ManifestInfo:
    rl = RateLimit(100, remaining, 21600) if remaining is not None else None
    return ManifestInfo(digest, media_type, size, rl)


PLAIN = images("images: [postgres:alpine]\n")[0]
PINNED = images(f"images: ['debian:bookworm@{A}']\n")[0]


# -- plan_image ------------------------------------------------------------------------------

def test_equal_digests_skip() -> None:
    plan = plan_image(PLAIN, head(A), head(A))
    assert plan.action is Action.SKIP and "up to date" in plan.reason and plan.pulls == 0


def test_missing_destination_copies_source_digest() -> None:
    plan = plan_image(PLAIN, head(A), None)
    assert plan.action is Action.COPY and plan.digest == A
    assert plan.reason == "not at the destination yet"


def test_moved_upstream_copies() -> None:
    plan = plan_image(PLAIN, head(B), head(A))
    assert plan.action is Action.COPY and plan.digest == B and "upstream moved" in plan.reason


def test_missing_source_is_error() -> None:
    plan = plan_image(PLAIN, None, head(A))
    assert plan.action is Action.ERROR and "not found (404)" in plan.reason


def test_probe_errors_carry_exit_code() -> None:
    plan = plan_image(PLAIN, ProbeError("denied", 3), None)
    assert plan.action is Action.ERROR and plan.exit_code == 3 and "source: denied" in plan.reason
    plan = plan_image(PLAIN, head(A), ProbeError("unreachable", 4))
    assert plan.action is Action.ERROR and plan.exit_code == 4
    assert plan.reason.startswith("destination:")


def test_pinned_tag_still_there() -> None:
    plan = plan_image(PINNED, head(A), None, head(A))
    assert plan.action is Action.COPY and plan.digest == A and plan.warnings == ()


def test_pinned_tag_moved_warns_and_copies_pin() -> None:
    plan = plan_image(PINNED, head(B), None, head(A))
    assert plan.action is Action.COPY and plan.digest == A
    assert len(plan.warnings) == 1 and "now points at" in plan.warnings[0]
    assert "pinned" in plan.warnings[0]


def test_pinned_up_to_date_still_warns() -> None:
    plan = plan_image(PINNED, head(B), head(A), head(A))
    assert plan.action is Action.SKIP and plan.warnings


def test_pinned_destination_differs() -> None:
    plan = plan_image(PINNED, head(A), head(C), head(A))
    assert plan.action is Action.COPY and "the pin is" in plan.reason


def test_pinned_digest_gone_is_error() -> None:
    plan = plan_image(PINNED, head(B), None, None)
    assert plan.action is Action.ERROR and "no longer serves the pinned digest" in plan.reason


def test_pinned_tag_deleted_upstream_warns() -> None:
    plan = plan_image(PINNED, None, None, head(A))
    assert plan.action is Action.COPY and "no longer exists" in plan.warnings[0]


def test_pull_estimates() -> None:
    assert estimated_pulls(DOCKER_MANIFEST, 1200) == 1
    # a 2-entry list is ~ 2 * 200 bytes: estimate must not undercount its 1 + 2 GETs
    assert estimated_pulls(DOCKER_MANIFEST_LIST, 400) >= 3
    assert estimated_pulls(DOCKER_MANIFEST_LIST, 10) == 2


# -- rate-limit gate ---------------------------------------------------------------------------


def test_gate_without_headers_never_blocks() -> None:
    gate = RateLimitGate(RateLimitPolicy(floor=10))
    gate.acquire("docker.io", 50, "x", lambda: None)


def test_gate_allows_above_floor_and_counts_reservations() -> None:
    gate = RateLimitGate(RateLimitPolicy(floor=10))
    gate.observe("docker.io", RateLimit(100, 13, 21600))
    gate.acquire("docker.io", 2, "a", lambda: None)  # 13 - 2 = 11 >= 10
    with pytest.raises(RateLimitStop) as info:
        gate.acquire("docker.io", 2, "b", lambda: None)  # 13 - 2 (in flight) - 2 = 9 < 10
    assert "13 of 100 per 21600s pulls remaining" in str(info.value)
    assert "floor is 10" in str(info.value) and "stopped copying from docker.io" in str(info.value)
    # once stopped, later copies from that registry stop at once; other registries are fine
    with pytest.raises(RateLimitStop):
        gate.acquire("docker.io", 1, "c", lambda: None)
    gate.acquire("quay.io", 1, "d", lambda: None)


def test_gate_release_counts_spent_pulls() -> None:
    gate = RateLimitGate(RateLimitPolicy(floor=0))
    gate.observe("h", RateLimit(10, 3, None))
    gate.acquire("h", 2, "a", lambda: None)
    gate.release("h", 2, spent=True)
    assert gate.snapshot("h")[0] == 1


def test_gate_waits_with_free_rechecks_then_proceeds() -> None:
    clock = FakeClock()
    answers = iter([RateLimit(100, 0, 21600), RateLimit(100, 50, 21600)])
    notes: list[str] = []
    gate = RateLimitGate(RateLimitPolicy(floor=5, max_wait=100, poll_interval=30),
                         clock=clock, sleep=clock.sleep, notify=notes.append)
    gate.observe("docker.io", RateLimit(100, 3, 21600))
    gate.acquire("docker.io", 1, "img", lambda: next(answers))
    assert clock.sleeps == [30, 30]
    assert gate.waited["docker.io"] == 60
    assert any("waiting 30s" in n for n in notes)


def test_gate_gives_up_after_max_wait() -> None:
    clock = FakeClock()
    gate = RateLimitGate(RateLimitPolicy(floor=5, max_wait=50, poll_interval=30),
                         clock=clock, sleep=clock.sleep)
    gate.observe("docker.io", RateLimit(100, 3, 21600))
    with pytest.raises(RateLimitStop, match="after waiting 50s"):
        gate.acquire("docker.io", 1, "img", lambda: RateLimit(100, 3, 21600))
    assert clock.sleeps == [30, 20]


# -- selection -------------------------------------------------------------------------------

SEVERAL = images("images:\n  - postgres:alpine\n  - debian:bookworm\n"
                 "  - quay.io/prometheus/busybox:latest\n")


def test_select_by_short_source_and_destination_names() -> None:
    assert [str(i.source) for i in select(SEVERAL, ["postgres*"])] == \
        ["docker.io/library/postgres:alpine"]
    assert len(select(SEVERAL, ["docker.io/*"])) == 2
    assert [i.source.host for i in select(SEVERAL, ["dst.example.com/mirror/prometheus/*"])] == \
        ["quay.io"]
    assert len(select(SEVERAL, [])) == 3
    assert len(select(SEVERAL, ["debian:*", "busybox"])) == 2


def test_select_nothing_is_an_error() -> None:
    with pytest.raises(InputError, match="matches no image"):
        select(SEVERAL, ["redis*"])


# -- orchestration ---------------------------------------------------------------------------

class Registry:
    """Fake HEAD answers keyed by (host/repo, reference), with a request log."""

    def __init__(self, answers: dict[tuple[str, str], object]) -> None:
        self.answers = answers
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, ref: ImageRef, reference: str):  # type: ignore[no-untyped-def]
        with self.lock:
            self.log.append((ref.name, reference))
        return self.answers.get((ref.name, reference))


class Copier:
    def __init__(self, fail: dict[str, Exception] | None = None,
                 rewrite: dict[str, str] | None = None) -> None:
        self.fail = fail or {}
        self.rewrite = rewrite or {}
        self.copies: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def copy(self, source: ImageRef, destination: ImageRef) -> str:
        with self.lock:
            self.copies.append((str(source), str(destination)))
        if source.repository in self.fail:
            raise self.fail[source.repository]
        assert source.digest is not None
        return self.rewrite.get(source.repository, source.digest)


def gate(floor: int = 0) -> RateLimitGate:
    return RateLimitGate(RateLimitPolicy(floor=floor))


def test_run_skips_copies_and_reports_failures_without_stopping() -> None:
    hub = "docker.io/library"
    dst = "dst.example.com/mirror/library"
    fake = Registry({
        (f"{hub}/postgres", "alpine"): head(A),
        (f"{dst}/postgres", "alpine"): head(A),  # up to date
        (f"{hub}/debian", "bookworm"): head(B),  # not mirrored yet
        (f"{hub}/busybox", "latest"): head(C),  # copy will fail
    })
    copier = Copier(fail={"library/busybox": RegistryTransientError("boom")})
    todo = images("images: [postgres:alpine, debian:bookworm, busybox]\n")
    report = run_mirror(todo, head=fake, copier=copier, gate=gate(), jobs=2)
    assert [o.status for o in report.outcomes] == [SKIPPED, COPIED, FAILED]
    # two workers: the copies may start in either order; a transient failure gets one more
    # try (a concurrent writer of the same blobs can make the destination answer 500)
    busybox = (f"{hub}/busybox@{C}", f"{dst}/busybox:latest")
    assert sorted(copier.copies) == sorted([(f"{hub}/debian@{B}", f"{dst}/debian:bookworm"),
                                            busybox, busybox])
    assert report.outcomes[2].pulls == 2
    failure = failure_of(report)
    assert failure is not None and failure.exit_code == 4
    assert "1 of 3 image(s) failed: docker.io/library/busybox:latest" in str(failure)
    summary = format_report(report)
    assert "1 copied, 1 skipped, 1 failed" in summary
    assert "FAILED" in summary and "boom" in summary


def test_dry_run_plans_with_heads_only() -> None:
    fake = Registry({("docker.io/library/debian", "bookworm"): head(B, remaining=7)})
    copier = Copier()
    todo = images("images: [debian:bookworm, postgres:alpine]\n")
    report = run_mirror(todo, head=fake, copier=copier, gate=gate(floor=10), jobs=1,
                        dry_run=True)
    assert copier.copies == []
    assert [o.status for o in report.outcomes] == [WOULD_COPY, FAILED]
    assert "would hit the floor of 10" in report.outcomes[0].warnings[0]
    text = format_report(report)
    assert text.startswith("mirror plan (dry run: HEAD requests only)")
    assert "  copy " in text and "  ERROR " in text
    assert "docker.io: ratelimit-remaining 7 of 100 per 21600s" in text


def test_digest_not_preserved_is_a_failure() -> None:
    fake = Registry({("docker.io/library/debian", "bookworm"): head(B)})
    copier = Copier(rewrite={"library/debian": C})
    report = run_mirror(images("images: [debian:bookworm]\n"), head=fake, copier=copier,
                        gate=gate(), jobs=1)
    assert report.outcomes[0].status == FAILED
    assert "did not preserve digests" in report.outcomes[0].message


def test_pinned_moved_probes_digest_and_copies_pin() -> None:
    fake = Registry({
        ("docker.io/library/debian", "bookworm"): head(B),
        ("docker.io/library/debian", A): head(A),
    })
    copier = Copier()
    report = run_mirror((PINNED,), head=fake, copier=copier, gate=gate(), jobs=1)
    assert report.outcomes[0].status == COPIED
    assert copier.copies == [(f"docker.io/library/debian@{A}",
                              "dst.example.com/mirror/library/debian:bookworm")]
    assert "now points at" in format_report(report)


def test_ratelimit_stop_spares_up_to_date_images() -> None:
    hub = "docker.io/library"
    fake = Registry({
        (f"{hub}/postgres", "alpine"): head(A, remaining=11),
        (f"{hub}/debian", "bookworm"): head(B, remaining=11),
        ("dst.example.com/mirror/library/debian", "bookworm"): head(B),
    })
    copier = Copier()
    todo = images("images: [postgres:alpine, debian:bookworm]\n")
    report = run_mirror(todo, head=fake, copier=copier, gate=gate(floor=11), jobs=1)
    assert [o.status for o in report.outcomes] == [FAILED, SKIPPED]
    assert copier.copies == []
    assert "rate limit" in report.outcomes[0].message
    failure = failure_of(report)
    assert failure is not None and failure.exit_code == 4


def test_429_during_copy_stops_later_copies_from_that_registry() -> None:
    hub = "docker.io/library"
    fake = Registry({(f"{hub}/postgres", "alpine"): head(A), (f"{hub}/debian", "bookworm"):
                     head(B), ("quay.io/x/y", "latest"): head(C)})
    copier = Copier(fail={"library/postgres": CopyRateLimited("toomanyrequests")})
    todo = images("images: [postgres:alpine, debian:bookworm, quay.io/x/y]\n")
    report = run_mirror(todo, head=fake, copier=copier, gate=gate(), jobs=1)
    assert [o.status for o in report.outcomes] == [FAILED, FAILED, COPIED]
    assert len(copier.copies) == 2  # debian never started
    assert "429" in report.outcomes[1].message


def test_unexpected_exception_is_one_failure() -> None:
    fake = Registry({("docker.io/library/debian", "bookworm"): head(B),
                     ("docker.io/library/postgres", "alpine"): head(A)})
    copier = Copier(fail={"library/debian": RuntimeError("bug")})
    report = run_mirror(images("images: [debian:bookworm, postgres:alpine]\n"), head=fake,
                        copier=copier, gate=gate(), jobs=2)
    assert [o.status for o in report.outcomes] == [FAILED, COPIED]
    assert "RuntimeError: bug" in report.outcomes[0].message


def test_skip_makes_no_copy_and_dry_run_skip_status() -> None:
    fake = Registry({("docker.io/library/debian", "bookworm"): head(B),
                     ("dst.example.com/mirror/library/debian", "bookworm"): head(B)})
    report = run_mirror(images("images: [debian:bookworm]\n"), head=fake, copier=None,
                        gate=gate(), jobs=1, dry_run=True)
    assert report.outcomes[0].status == WOULD_SKIP
    assert failure_of(report) is None
