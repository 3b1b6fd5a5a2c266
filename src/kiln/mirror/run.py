"""Running a mirror: list tag sets, probe with HEADs, plan, copy in parallel, report every image.

Tag sets (``tags:``) are listed first (``GET .../tags/list``: no pull) and expanded into one image
per selected tag (:func:`kiln.mirror.plan.expand_tag_sets`). For each image (``jobs`` at a time):
HEAD the source tag (and the pinned digest when the tag has moved away from it), HEAD the
destination tag, plan (:mod:`kiln.mirror.plan`). Equal digests are skipped without a single GET.
Otherwise, at the pull floor:

- the wanted digest is in the destination repository already (another tag, or a pin): the
  destination's own manifest is written under the tag (GET + PUT at the destination, no pull);
- a multi-arch index: GET it from the source (1 pull), HEAD each child at the destination, copy
  only the missing children (skopeo, by digest: 1 pull each), PUT the index bytes unchanged;
- an image: skopeo copies the source *digest* (1 pull) and kiln checks the digest it wrote.

With ``signatures: true`` an image's signatures and attestations follow it (:class:`_Artifacts`):
found with HEADs before anything is written (one referrers list where the source has no
``sha256-<hex>`` index, asked once per run of a registry without the API), read only when the
destination lacks them (a pull each), checked to name the image as their subject (else the
image fails, nothing written for it), and written after the image, the destination's
``sha256-<hex>`` index last. Up-to-date artifacts cost no pull.

A copy first reserves its pulls with the rate-limit gate. One image's failure never stops the
others; the summary lists every outcome, the pulls the run spent and what the source says remain,
and the run raises :class:`MirrorFailed` (with the failures' exit-code category) when anything
failed. A dry run stops after planning: HEADs and tag lists only (and referrers lists, with
``signatures``), and lists each artifact it would copy.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Protocol, runtime_checkable

from kiln import console, promote, referrers, skopeo
from kiln.errors import (
    ConfigError,
    InputError,
    KilnError,
    RegistryError,
    RegistryTransientError,
)
from kiln.inventory import short_tag
from kiln.mirror.config import MirrorConfig, MirrorImage, MirrorSet, config_path, load_config
from kiln.mirror.plan import (
    Action,
    Expansion,
    Listing,
    Plan,
    Probe,
    ProbeError,
    SetResult,
    children_to_fetch,
    describe_selection,
    expand_tag_sets,
    plan_image,
    wanted_digest,
)
from kiln.mirror.ratelimit import RateLimitGate, RateLimitStop
from kiln.registry import access, media
from kiln.registry.client import RegistryClient
from kiln.registry.media import Manifest, ManifestInfo, RateLimit
from kiln.registry.reference import ImageRef
from kiln.settings import Settings
from kiln.skopeo import CopyRateLimited


class MirrorFailed(KilnError):
    """At least one image could not be mirrored (the summary lists which and why)."""

    def __init__(self, message: str, *, exit_code: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code


class HeadFn(Protocol):
    def __call__(self, ref: ImageRef, reference: str) -> Probe: ...


class Copier(Protocol):
    def copy(self, source: ImageRef, destination: ImageRef) -> str: ...


@runtime_checkable
class DigestCopier(Protocol):
    """A copier that also copies between two ``docker://`` references given as text (a child
    manifest by digest to ``repo@digest``); :class:`kiln.skopeo.Copier` is one."""

    def copy_to(self, source: str, destination: str, what: str) -> str: ...


class Registries(Protocol):
    """The registry requests a run makes beyond HEADs (a :class:`_Registries` in real runs)."""

    def list_tags(self, ref: ImageRef) -> list[str]: ...

    def get_manifest(self, ref: ImageRef, reference: str) -> Manifest: ...

    def put_manifest(self, ref: ImageRef, reference: str, manifest: Manifest) -> str: ...


# Outcome statuses
COPIED, SKIPPED, FAILED, WOULD_COPY, WOULD_SKIP = "copied", "skipped", "failed", "would copy", \
    "would skip"
RETAGGED, WOULD_RETAG = "retagged", "would retag"


@dataclass(frozen=True)
class Outcome:
    """What happened to one image."""

    image: MirrorImage
    status: str
    message: str
    plan: Plan | None = None
    warnings: tuple[str, ...] = ()
    exit_code: int = 0
    seconds: float = 0.0
    pulls: int = 0  # source manifest GETs this image spent (its artifacts' included)
    artifacts: tuple[ArtifactResult, ...] = ()  # with ``signatures``: what refers to it

    @property
    def failed(self) -> bool:
        return self.status == FAILED


@dataclass
class MirrorReport:
    outcomes: list[Outcome]
    dry_run: bool
    ratelimits: dict[str, tuple[int | None, int | None, int | None]] = field(default_factory=dict)
    sets: list[SetResult] = field(default_factory=list)

    def pulls(self) -> dict[str, int]:
        """Source manifest GETs (Docker Hub pulls) the run spent, per source host."""
        spent: dict[str, int] = {}
        for o in self.outcomes:
            spent[o.image.source.host] = spent.get(o.image.source.host, 0) + o.pulls
        return spent

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.failed]

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for outcome in self.outcomes:
            result[outcome.status] = result.get(outcome.status, 0) + 1
        return result

    def to_json(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "images": [
                {
                    "source": str(o.image.source),
                    "destination": str(o.image.destination),
                    "status": o.status,
                    "message": o.message,
                    "action": o.plan.action.value if o.plan else None,
                    "digest": o.plan.digest if o.plan else None,
                    "warnings": list(o.warnings),
                    "pulls": o.pulls,
                    **({"selected_by": o.image.selected_by} if o.image.selected_by else {}),
                    **({"artifacts": [a.as_dict() for a in o.artifacts]}
                       if o.image.signatures else {}),
                }
                for o in self.outcomes
            ],
            "tag_sets": [
                {
                    "source": r.tag_set.source.name,
                    "line": r.tag_set.position.line,
                    "rule": r.tag_set.rule.describe(),
                    "listed": r.selection.listed if r.selection else None,
                    "selected": list(r.selection.selected) if r.selection else [],
                    "error": r.error,
                }
                for r in self.sets
            ],
            "pulls": self.pulls(),
            "ratelimits": {
                host: {"remaining": r, "limit": lim, "window": w}
                for host, (r, lim, w) in self.ratelimits.items()
            },
        }


# -- selection ---------------------------------------------------------------------------------

def _names(image: MirrorImage) -> set[str]:
    src = image.source
    names = {image.source_text, str(src), f"{src.name}:{src.tag}", f"{src.repository}:{src.tag}",
             src.repository, src.repository.rsplit("/", 1)[-1],
             f"{src.repository.rsplit('/', 1)[-1]}:{src.tag}"}
    if image.destination is not None:
        dst = image.destination
        names |= {str(dst), dst.name, dst.repository, f"{dst.repository}:{dst.tag}"}
    return names


def select(images: Sequence[MirrorImage], patterns: Iterable[str]) -> list[MirrorImage]:
    """The images whose source or destination name matches any ``fnmatch`` pattern (all when no
    pattern). ``postgres*`` matches ``docker.io/library/postgres:alpine`` through its short name."""
    wanted = [p for p in patterns if p]
    if not wanted:
        return list(images)
    chosen = [image for image in images
              if any(fnmatchcase(name, pattern) for pattern in wanted for name in _names(image))]
    if not chosen:
        raise InputError(
            f"--only {' '.join(wanted)} matches no image of the mirror configuration",
            hint="configured sources: " + ", ".join(str(i.source) for i in images),
        )
    return chosen


# -- progress ----------------------------------------------------------------------------------

class Progress:
    """Live progress on an interactive terminal (rich), plain lines in CI and logs."""

    def __init__(self, total: int, *, live: bool | None = None) -> None:
        self.total = total
        self.done = 0
        self._lock = threading.Lock()
        if live is None:
            live = console.live()
        self.live = live
        self._rich: object | None = None
        self._tasks: dict[str, object] = {}

    @contextmanager
    def running(self) -> Iterator[Progress]:
        if not self.live:
            yield self
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress

        with RichProgress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                          MofNCompleteColumn(), TimeElapsedColumn(), console=console.stderr,
                          transient=True) as rich_progress:
            self._rich = rich_progress
            self._overall = rich_progress.add_task("mirror", total=self.total)
            try:
                yield self
            finally:
                self._rich = None

    def phase(self, image: MirrorImage, text: str) -> None:
        line = console.mask(f"{image.label}: {text}")
        with self._lock:
            rich_progress = self._rich
            if rich_progress is None:
                console.info(f"kiln: [{self.done}/{self.total}] {line}")
                return
            key = image.label
            if key in self._tasks:
                rich_progress.update(self._tasks[key], description=line)  # type: ignore[attr-defined]
            else:
                self._tasks[key] = rich_progress.add_task(line, total=None)  # type: ignore[attr-defined]

    def note(self, text: str) -> None:
        with self._lock:
            if self._rich is None:
                console.info(f"kiln: {console.mask(text)}")
            else:
                self._rich.console.print(console.mask(text), markup=False)  # type: ignore[attr-defined]

    def finished(self, outcome: Outcome) -> None:
        with self._lock:
            self.done += 1
            line = console.mask(f"[{self.done}/{self.total}] {outcome.image.label}: "
                                f"{outcome.status} ({_first_line(outcome.message)})")
            rich_progress = self._rich
            if rich_progress is None:
                console.info(f"kiln: {line}")
                return
            task = self._tasks.pop(outcome.image.label, None)
            if task is not None:
                rich_progress.remove_task(task)  # type: ignore[attr-defined]
            rich_progress.update(self._overall, advance=1)  # type: ignore[attr-defined]
            rich_progress.console.print(line, markup=False)  # type: ignore[attr-defined]


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


# -- the run -----------------------------------------------------------------------------------

def run_mirror(
    images: Sequence[MirrorImage],
    *,
    head: HeadFn,
    copier: Copier | None,
    gate: RateLimitGate,
    jobs: int,
    dry_run: bool = False,
    progress: Progress | None = None,
    registries: Registries | None = None,
) -> MirrorReport:
    """Mirror ``images`` (or only plan them when ``dry_run``); never raises for one image.

    With ``registries`` (real runs), a digest already in the destination repository is retagged
    there and an index is copied child by child (only the missing ones); without, every copy
    goes through ``copier``.
    """
    progress = progress or Progress(len(images), live=False)
    if not dry_run and copier is None:
        raise ValueError("a copier is needed unless dry_run")
    api = _ApiMemory()

    def probe(ref: ImageRef, reference: str) -> Probe:
        result = head(ref, reference)
        if isinstance(result, ManifestInfo):
            gate.observe(ref.host, result.ratelimit)
        return result

    def one(image: MirrorImage) -> Outcome:
        started = time.monotonic()
        try:
            outcome = _mirror_one(image, probe, copier, gate, dry_run, progress, registries,
                                  api)
        except KilnError as exc:  # anything unexpected from the adapters: this image only
            outcome = Outcome(image, FAILED, str(exc), exit_code=exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - one image's bug must not stop the others
            outcome = Outcome(image, FAILED, f"unexpected error: {type(exc).__name__}: {exc}",
                              exit_code=1)
        outcome = dataclasses.replace(outcome, seconds=time.monotonic() - started)
        progress.finished(outcome)
        return outcome

    with progress.running(), ThreadPoolExecutor(max_workers=max(1, jobs),
                                                thread_name_prefix="mirror") as pool:
        outcomes = list(pool.map(one, images))
    hosts = {image.source.host for image in images}
    return MirrorReport(outcomes, dry_run, {h: gate.snapshot(h) for h in sorted(hosts)})


def _mirror_one(image: MirrorImage, probe: Callable[[ImageRef, str], Probe],
                copier: Copier | None, gate: RateLimitGate, dry_run: bool,
                progress: Progress, registries: Registries | None = None,
                api: _ApiMemory | None = None) -> Outcome:
    src, dst = image.source, image.destination
    assert dst is not None, "destination must be resolved before running"
    progress.phase(image, "checking (HEAD)")
    source_tag = probe(src, image.tag)
    source_pinned: Probe = None
    if image.pinned:
        assert src.digest is not None
        if isinstance(source_tag, ManifestInfo) and source_tag.digest == src.digest:
            source_pinned = source_tag
        else:
            source_pinned = probe(src, src.digest)
    destination = probe(dst, image.tag)
    wanted = wanted_digest(image, source_tag, source_pinned)
    destination_digest: Probe = None
    if wanted is not None and (registries is not None or dry_run) and not isinstance(
            destination, ProbeError) and (destination is None or destination.digest != wanted):
        destination_digest = probe(dst, wanted)  # our registry: free
    plan = plan_image(image, source_tag, destination, source_pinned, destination_digest)

    if plan.action is Action.ERROR:
        return Outcome(image, FAILED, plan.reason, plan, plan.warnings, plan.exit_code or 2)
    assert plan.digest is not None

    def refresh() -> RateLimit | None:
        answer = probe(src, plan.digest or image.tag)
        return answer.ratelimit if isinstance(answer, ManifestInfo) else None

    found: _Artifacts | None = None
    if image.signatures:
        if not isinstance(registries, RegistryViews):
            return Outcome(image, FAILED, "signatures: true needs a registry client (this run "
                           "has none)", plan, plan.warnings, 1)
        found = _Artifacts(image, registries.view(src, dry_run=dry_run),
                           registries.view(dst, dry_run=dry_run), gate, refresh,
                           api or _ApiMemory(), dry_run=dry_run)
        is_index = media.is_index(plan.media_type or "")
        subjects = [plan.digest]
        if is_index and plan.action is not Action.COPY:  # the index is ours already: no pull
            assert registries is not None
            subjects += _children(registries.get_manifest(dst, plan.digest), f"{dst.name} index")
        progress.phase(image, "looking for signatures and attestations (HEAD)")
        try:
            found.discover(subjects)  # read and checked before anything is written
        except KilnError as exc:
            return _artifact_failure(image, plan, found, exc, written=False, pulls=found.pulls)

    outcome = _mirror_image(image, plan, probe, copier, gate, dry_run, progress, registries,
                            refresh, found)
    if found is None:
        return outcome
    if outcome.failed:  # the pulls its artifacts' discovery spent count too
        return dataclasses.replace(outcome, pulls=outcome.pulls + found.pulls,
                                   artifacts=found.results)
    if not dry_run:
        progress.phase(image, "copying signatures and attestations")
    try:
        found.write()
    except KilnError as exc:
        return _artifact_failure(image, plan, found, exc, written=True,
                                 pulls=outcome.pulls + found.pulls)
    results = found.results
    changed = sum(1 for r in results if r.status != UP_TO_DATE)
    note = (f"; {len(results)} artifact(s): {changed} to copy" if dry_run else
            f"; {len(results)} artifact(s), {changed} copied") if results else \
        "; no signatures or attestations found"
    return dataclasses.replace(outcome, message=outcome.message + note,
                               pulls=outcome.pulls + found.pulls, artifacts=results)


class _BeforeWrite(Exception):
    """An index child's artifacts failed their check before anything was written."""

    def __init__(self, error: KilnError) -> None:
        super().__init__(str(error))
        self.error = error


def _artifact_failure(image: MirrorImage, plan: Plan, found: _Artifacts, exc: KilnError, *,
                      written: bool, pulls: int) -> Outcome:
    what = "the image was mirrored, but its signatures and attestations failed" if written \
        else "signatures and attestations: nothing was written for this image"
    return Outcome(image, FAILED, f"{what}: {exc}", plan, plan.warnings, exc.exit_code,
                   pulls=pulls, artifacts=found.results)


def _mirror_image(image: MirrorImage, plan: Plan, probe: Callable[[ImageRef, str], Probe],
                  copier: Copier | None, gate: RateLimitGate, dry_run: bool,
                  progress: Progress, registries: Registries | None,
                  refresh: Callable[[], RateLimit | None],
                  found: _Artifacts | None) -> Outcome:
    """Skip, retag or copy the image itself, as planned. ``found``: its artifacts, whose
    index children are looked for once the source index is read (before anything is written)."""
    src, dst = image.source, image.destination
    assert dst is not None and plan.digest is not None
    if plan.action is Action.SKIP:
        return Outcome(image, WOULD_SKIP if dry_run else SKIPPED, plan.reason, plan,
                       plan.warnings)
    if plan.action is Action.RETAG:
        if dry_run:
            return Outcome(image, WOULD_RETAG, f"{plan.reason}; would write {dst} from "
                           f"{dst.name}@{plan.digest[:19]} (no pull)", plan, plan.warnings)
        assert registries is not None
        progress.phase(image, f"retagging {plan.digest[:19]} ({plan.reason})")
        try:
            manifest = registries.get_manifest(dst, plan.digest)
            registries.put_manifest(dst, image.tag, manifest)
        except KilnError as exc:
            return Outcome(image, FAILED, str(exc), plan, plan.warnings, exc.exit_code)
        return Outcome(image, RETAGGED, f"{plan.reason}; tagged {plan.digest}", plan,
                       plan.warnings)
    if dry_run:
        warnings = plan.warnings
        remaining, _, _ = gate.snapshot(src.host)
        if remaining is not None and remaining - plan.pulls < gate.policy.floor:
            warnings += (f"{src.host} has {remaining} pulls left; this copy needs up to "
                         f"{plan.pulls} and would hit the floor of {gate.policy.floor}",)
        message = f"{plan.reason}; would copy {plan.digest} (up to {plan.pulls} " \
                  f"pull{'s' if plan.pulls != 1 else ''})"
        if found is not None and media.is_index(plan.media_type or ""):
            message += " (the children's signatures: looked for once the index is read)"
        return Outcome(image, WOULD_COPY, message, plan, warnings)

    assert copier is not None
    source_by_digest = ImageRef(src.host, src.repository, None, plan.digest)
    by_children = registries is not None and isinstance(copier, DigestCopier) \
        and media.is_index(plan.media_type or "")
    # An index copied child by child reserves the index GET now and each missing child once
    # known; anything else reserves the plan's estimate.
    reserved = [1 if by_children else plan.pulls]
    try:
        gate.acquire(src.host, reserved[0], image.label, refresh)
    except RateLimitStop as exc:
        return Outcome(image, FAILED, str(exc), plan, plan.warnings, exc.exit_code)
    progress.phase(image, f"copying {plan.digest[:19]} ({plan.reason})")
    spent = [0]

    def reserve(pulls: int) -> None:
        gate.acquire(src.host, pulls, image.label, refresh)
        reserved[0] += pulls

    def children_artifacts(index: Manifest) -> None:
        if found is not None:
            try:
                found.discover(_children(index, f"{src.name}@{index.digest}"))
            except KilnError as exc:
                raise _BeforeWrite(exc) from exc

    try:
        if by_children:
            assert registries is not None and isinstance(copier, DigestCopier)
            written, note = _copy_index(source_by_digest, dst, probe, registries, copier, spent,
                                        reserve, children_artifacts)
        else:
            if found is not None and registries is not None \
                    and media.is_index(plan.media_type or ""):
                spent[0] += 1  # a copier that copies indexes whole: read it for its children
                children_artifacts(registries.get_manifest(source_by_digest, plan.digest))
            # skopeo GETs the manifest once per attempt (an index goes through _copy_index)
            written = _copy_once_more_after_a_race(lambda: copier.copy(source_by_digest, dst),
                                                   spent)
            note = ""
    except _BeforeWrite as failure:
        assert found is not None
        return _artifact_failure(image, plan, found, failure.error, written=False,
                                 pulls=spent[0])
    except CopyRateLimited as exc:
        gate.stop(src.host, f"{src.host} answered 429 (pull rate limit reached) while copying "
                  f"{image.label}")
        return Outcome(image, FAILED, str(exc), plan, plan.warnings, exc.exit_code,
                       pulls=spent[0])
    except KilnError as exc:
        return Outcome(image, FAILED, str(exc), plan, plan.warnings, exc.exit_code,
                       pulls=spent[0])
    finally:
        # what was spent counts against the budget until the next header says otherwise; an
        # estimate that was not spent (or a copy that failed early) is freed
        used = min(spent[0], reserved[0]) if by_children else reserved[0]
        gate.release(src.host, reserved[0] - used, spent=False)
        gate.release(src.host, used, spent=True)
    if written and written != plan.digest:
        return Outcome(image, FAILED,
                       f"the destination got {written}, not the source digest {plan.digest}: "
                       "the copy did not preserve digests", plan, plan.warnings, 2,
                       pulls=spent[0])
    return Outcome(image, COPIED, f"{plan.reason}; copied {plan.digest}{note}", plan,
                   plan.warnings, pulls=spent[0])


_RACE_PAUSE = 0.5  # seconds: how long another writer of the same manifest needs to finish


def _copy_once_more_after_a_race(copy: Callable[[], str], spent: list[int]) -> str:
    """Run one skopeo copy; a transient failure gets one more try after a pause. Another writer
    of the same blobs at the destination (concurrent mirrors of the same image) can make
    distribution answer 500 for a moment ("writing blob: failed to read from destination
    repository"), which skopeo's own retries do not cover. A copy is idempotent; each attempt
    costs one source manifest GET (a pull), counted in ``spent``. A rate limit is never retried."""
    for attempt in (1, 2):
        spent[0] += 1
        try:
            return copy()
        except CopyRateLimited:
            raise
        except RegistryTransientError:
            if attempt == 2:
                raise
            time.sleep(_RACE_PAUSE)
    raise AssertionError("unreachable")


def _put_index(registries: Registries, destination: ImageRef, index: Manifest) -> None:
    """PUT the index bytes. A child that a concurrent mirror is still writing at the destination
    answers HEAD already but fails the registry's check of the index ("digest invalid",
    "manifest blob unknown"): wait for that writer, up to three times."""
    assert destination.tag is not None
    for attempt in range(4):
        try:
            registries.put_manifest(destination, destination.tag, index)
            return
        except RegistryError:  # not auth, not transient (the client retried those)
            if attempt == 3:
                raise
            time.sleep(_RACE_PAUSE * 2 ** attempt)


def _copy_index(source: ImageRef, destination: ImageRef, probe: Callable[[ImageRef, str], Probe],
                registries: Registries, copier: DigestCopier, spent: list[int],
                reserve: Callable[[int], None],
                before_write: Callable[[Manifest], None] | None = None) -> tuple[str, str]:
    """Copy the index ``source`` (by digest) to ``destination`` (a tag) at the pull floor: GET
    the index, HEAD its children at the destination, reserve and copy only the missing children
    (by digest), then PUT the index bytes unchanged. Returns the digest written and a note.
    ``before_write`` sees the index once it is read, before anything is written."""
    assert source.digest is not None and destination.tag is not None
    index = registries.get_manifest(source, source.digest)
    spent[0] += 1
    if index.digest != source.digest:
        raise RegistryError(f"{source}: the source served {index.digest} for {source.digest}")
    if before_write is not None:
        before_write(index)
    children = [child.digest for child in media.index_children(index.body, f"{source} index")]
    update = children_to_fetch(children, {child: probe(destination, child) for child in children})
    if update.fetch:
        reserve(len(update.fetch))  # may wait or stop (rate limit), as any copy does
    for child in update.fetch:
        from_ref = skopeo.docker_ref(ImageRef(source.host, source.repository, None, child))
        to_ref = skopeo.docker_ref(ImageRef(destination.host, destination.repository, None, child))
        what = f"{source.name}@{child} -> {destination.name}"
        written = _copy_once_more_after_a_race(
            functools.partial(copier.copy_to, from_ref, to_ref, what), spent)
        if written and written != child:
            raise RegistryError(f"{destination.name}: child {child} was written as {written}: "
                                "the copy did not preserve digests")
    _put_index(registries, destination, index)
    have = f", {len(update.present)} at the destination already" if update.present else ""
    return index.digest, (f" ({len(update.fetch)} of {len(children)} child manifest(s) "
                          f"fetched{have})")


# -- signatures and attestations travel with the image (kiln.referrers) ------------------------

UP_TO_DATE, WOULD_READ = "up to date", "would read"


@runtime_checkable
class RegistryViews(Protocol):
    """Registries that hand out :class:`kiln.promote.Registry` views (one repository each), the
    way promote reads and copies artifacts; :class:`_Registries` is one."""

    def view(self, ref: ImageRef, *, dry_run: bool) -> promote.Registry: ...


@dataclass(frozen=True)
class ArtifactResult:
    """One artifact of a mirrored image (or the referrers fallback index) and what happened."""

    subject: str  # the digest it refers to (the image's, or an index child's)
    name: str  # cosign or fallback tag, else the artifact's type
    digest: str  # "" when a dry run did not read it
    status: str  # copied | up to date | would copy | would read

    def __str__(self) -> str:
        digest = f" {self.digest[:19]}" if self.digest else ""
        return f"{short_tag(self.name)}{digest} of {self.subject[:19]}: {self.status}"

    def as_dict(self) -> dict[str, str]:
        return {"subject": self.subject, "name": self.name, "digest": self.digest,
                "status": self.status}


@dataclass
class _Found:
    """What refers to one subject digest: read and checked before anything is written."""

    subject: str
    entries: list[referrers.Referrer] = field(default_factory=list)  # every listed referrer
    copy: list[tuple[str, Manifest]] = field(default_factory=list)  # (reference, manifest)
    fallback: Manifest | None = None  # the source's sha256-<hex> index, when it was read
    from_api: bool = False  # entries came from the source's referrers API
    results: list[ArtifactResult] = field(default_factory=list)


class _ApiMemory:
    """Which source hosts answered that they have no referrers API (asked once per run)."""

    def __init__(self) -> None:
        self._without: set[str] = set()
        self._lock = threading.Lock()

    def known_without(self, host: str) -> bool:
        with self._lock:
            return host in self._without

    def without(self, host: str) -> None:
        with self._lock:
            self._without.add(host)


class _Artifacts:
    """The artifacts of one mirrored image: found with HEADs first, read (a pull each) only
    when the destination lacks them, checked, and written after the image.

    Per subject digest: HEAD ``sha256-<hex>`` at the source (the referrers fallback index). When
    it is there and the destination's has the same digest, every entry is there already (entries
    are written before their index): nothing to read. When it differs, GET it (1 pull) and HEAD
    each entry at the destination. Without it, ask the referrers API (a GET of the referrers
    list, not of a manifest; a host that has no API is asked once per run). Then HEAD cosign's
    three tags at the source, and at the destination those the source has. Only what the
    destination lacks or has under another digest is read (1 pull each), and every referrer read
    must name the subject (:func:`kiln.referrers.check_subject`) or the image fails with nothing
    written for it."""

    def __init__(self, image: MirrorImage, src: promote.Registry, dst: promote.Registry,
                 gate: RateLimitGate, refresh: Callable[[], RateLimit | None],
                 api: _ApiMemory, *, dry_run: bool) -> None:
        self.image = image
        self.src, self.dst = src, dst
        self.gate, self.refresh, self.api = gate, refresh, api
        self.dry_run = dry_run
        self.pulls = 0
        self.found: list[_Found] = []

    @property
    def host(self) -> str:
        return self.image.source.host

    def _head(self, reference: str) -> ManifestInfo | None:
        info = self.src.head(reference)
        if info is not None:
            self.gate.observe(self.host, info.ratelimit)
        return info

    def _pull(self, reference: str) -> Manifest:
        """GET a manifest at the source: a pull, reserved with the rate-limit gate first."""
        self.gate.acquire(self.host, 1, self.image.label, self.refresh)
        spent = False
        try:
            manifest = self.src.get(reference)
            spent = True
            self.pulls += 1
        finally:
            self.gate.release(self.host, 1, spent=spent)
        if reference.startswith("sha256:") and manifest.digest != reference:
            raise RegistryError(f"{self.src.name}: asked for {reference}, got {manifest.digest}")
        return manifest

    def discover(self, subjects: Sequence[str]) -> None:
        for subject in subjects:
            self.found.append(self._discover(subject))

    def _discover(self, subject: str) -> _Found:
        found = _Found(subject)
        would = WOULD_COPY if self.dry_run else COPIED
        index_tag = referrers.fallback_tag(subject)
        source_index = self._head(index_tag)
        entries: list[referrers.Referrer] = []
        if source_index is not None:
            there = self.dst.head(index_tag)
            if there is not None and there.digest == source_index.digest:
                found.results.append(ArtifactResult(subject, index_tag, there.digest, UP_TO_DATE))
            elif self.dry_run:
                found.results.append(ArtifactResult(subject, index_tag, source_index.digest,
                                                    f"{WOULD_READ} (1 pull), then copy the "
                                                    "entries the destination lacks"))
            else:
                found.fallback = self._pull(index_tag)
                entries = referrers.parse_referrers_index(
                    found.fallback.body, f"{self.src.name}:{index_tag}")
        elif not self.api.known_without(self.host):
            body = self.src.referrers(subject)
            if body is None:
                self.api.without(self.host)
            else:
                found.from_api = True
                entries = referrers.parse_referrers_index(
                    body, f"{self.src.name} referrers of {subject}")
        found.entries = entries
        for entry in entries:
            name = entry.artifact_type or "referrer"
            if self.dst.head(entry.digest) is not None:  # same digest: the same bytes
                found.results.append(ArtifactResult(subject, name, entry.digest, UP_TO_DATE))
                continue
            if self.dry_run:
                found.results.append(ArtifactResult(subject, name, entry.digest,
                                                    f"{would} (1 pull)"))
                continue
            manifest = self._pull(entry.digest)
            referrers.check_subject(manifest.body, subject, f"{self.src.name}@{entry.digest}")
            found.copy.append((entry.digest, manifest))
            found.results.append(ArtifactResult(subject, name, entry.digest, would))
        for tag in referrers.cosign_tags(subject):
            info = self._head(tag)
            if info is None:
                continue
            there = self.dst.head(tag)
            if there is not None and there.digest == info.digest:
                found.results.append(ArtifactResult(subject, tag, info.digest, UP_TO_DATE))
            elif self.dry_run:
                found.results.append(ArtifactResult(subject, tag, info.digest,
                                                    f"{would} (1 pull)"))
            else:
                manifest = self._known(found, info.digest) or self._pull(tag)
                found.copy.append((tag, manifest))
                found.results.append(ArtifactResult(subject, tag, manifest.digest, would))
        return found

    def _known(self, found: _Found, digest: str) -> Manifest | None:
        """``digest`` without a pull: read already (a cosign tag on a listed referrer), or in
        the destination repository (ours: free)."""
        for _, manifest in found.copy:
            if manifest.digest == digest:
                return manifest
        return self.dst.get(digest) if self.dst.head(digest) is not None else None

    def write(self) -> None:
        """Write what :meth:`discover` read: the artifacts, then the destination's fallback
        index (so an index at the destination always comes after its entries)."""
        if self.dry_run:
            return
        for found in self.found:
            for reference, manifest in found.copy:
                promote.copy_manifest(self.src, self.dst, manifest, reference)
            index = self._fallback_for(found)
            if index is not None:
                self.dst.put(referrers.fallback_tag(found.subject), index)
                found.results.append(ArtifactResult(found.subject,
                                                    referrers.fallback_tag(found.subject),
                                                    index.digest, COPIED))

    def _fallback_for(self, found: _Found) -> Manifest | None:
        """The ``sha256-<hex>`` index the destination needs, ``None`` when it has it: the
        source's (merged with what the destination lists already), or, when the source answered
        through its referrers API, one where the destination has no API."""
        if not found.entries:
            return None
        if found.from_api and self.dst.referrers(found.subject) is not None:
            return None  # the destination lists its referrers itself
        tag = referrers.fallback_tag(found.subject)
        existing = self.dst.get(tag).body if self.dst.head(tag) is not None else None
        merged = referrers.merged_fallback(
            existing, found.fallback.body if found.fallback is not None else None, found.entries)
        return None if merged is None else Manifest.from_bytes(merged, media.OCI_INDEX)

    @property
    def results(self) -> tuple[ArtifactResult, ...]:
        return tuple(result for found in self.found for result in found.results)


def _children(manifest: Manifest, where: str) -> list[str]:
    return [child.digest for child in media.index_children(manifest.body, where)]


# -- reporting ---------------------------------------------------------------------------------

def format_report(report: MirrorReport,
                  operations: Mapping[str, Sequence[str]] | None = None) -> str:
    """The summary (or the dry run's plan) as plain text: one line per image, then warnings.

    ``operations`` (image label -> lines) adds, under each image, the registry requests made
    and the exact ``skopeo copy`` a real run would start (the dry run's plan).
    """
    counts = report.counts()
    order = (COPIED, RETAGGED, WOULD_COPY, WOULD_RETAG, SKIPPED, WOULD_SKIP, FAILED)
    tally = ", ".join(f"{counts[s]} {s}" for s in order if s in counts)
    title = "mirror summary"
    if report.dry_run:
        asked = ["HEAD requests"] + (["tag lists"] if report.sets else []) + (
            ["referrers lists"] if any(o.image.signatures for o in report.outcomes) else [])
        listed = asked[0] if len(asked) == 1 else f"{', '.join(asked[:-1])} and {asked[-1]}"
        title = f"mirror plan (dry run: {listed} only)"
    lines: list[str] = []
    if report.sets:
        lines.append("tag sets:")
        for result in report.sets:
            lines.extend("  " + line for line in describe_selection(result))
    lines.append(f"{title}: {len(report.outcomes)} image(s): {tally}")
    width = max((len(o.status) for o in report.outcomes), default=6)
    for o in report.outcomes:
        status = "FAILED" if o.failed else o.status
        if report.dry_run:
            status = {WOULD_COPY: "copy", WOULD_SKIP: "skip", WOULD_RETAG: "retag",
                      FAILED: "ERROR"}.get(o.status, status)
        lines.append(f"  {status:<{width}}  {o.image.source} -> {o.image.destination}")
        message = o.message.splitlines() or [""]
        lines.append(f"  {'':<{width}}    {message[0]}")
        lines.extend(f"  {'':<{width}}    {extra}" for extra in message[1:])
        # the plan shows every artifact; the summary those that changed (the message counts all)
        lines.extend(f"  {'':<{width}}    artifact {artifact}" for artifact in o.artifacts
                     if report.dry_run or artifact.status != UP_TO_DATE)
        for operation in (operations or {}).get(o.image.label, ()):
            lines.append(f"  {'':<{width}}    {operation}")
    warnings = [(o.image, w) for o in report.outcomes for w in o.warnings]
    if warnings:
        lines.append("warnings:")
        lines.extend(f"  {image.source}: {text}" for image, text in warnings)
    spent = report.pulls()
    for host, (remaining, limit, window) in report.ratelimits.items():
        parts = []
        if not report.dry_run:
            count = spent.get(host, 0)
            parts.append(f"{count} pull{'s' if count != 1 else ''} spent (manifest GETs)")
        if remaining is not None:
            extra = f" of {limit}" if limit is not None else ""
            per = f" per {window}s" if window else ""
            parts.append(f"ratelimit-remaining {remaining}{extra}{per}")
        if parts:
            lines.append(f"{host}: {'; '.join(parts)}")
    return "\n".join(lines)


def record_outcomes(report: MirrorReport) -> None:
    """One ``--json`` result per image: destination repository, tag, digest, what happened."""
    actions = {COPIED: "copied", SKIPPED: "skipped", FAILED: "failed",
               WOULD_COPY: "planned", WOULD_SKIP: "skipped", RETAGGED: "tagged",
               WOULD_RETAG: "planned"}
    for o in report.outcomes:
        dst = o.image.destination
        console.record(actions.get(o.status, o.status),
                       image=dst.name if dst is not None else o.image.destination_text,
                       tag=o.image.source.tag, digest=o.plan.digest if o.plan else None,
                       source=str(o.image.source), status=o.status,
                       message=o.message, warnings=list(o.warnings),
                       **({"artifacts": [a.as_dict() for a in o.artifacts]}
                          if o.image.signatures else {}))


_CODE_PRIORITY = (6, 3, 2, 5, 1, 4)  # tool missing, auth, input, build, unexpected, transient


def failure_of(report: MirrorReport) -> MirrorFailed | None:
    failures = report.failures
    if not failures:
        return None
    codes = {o.exit_code or 1 for o in failures}
    # Mixed failures: the code that says what a person must do first. Only when every failure
    # is transient is the whole run worth a plain retry (4).
    code = next((c for c in _CODE_PRIORITY if c in codes), max(codes))
    names = ", ".join(str(o.image.source) for o in failures)
    verb = "would fail" if report.dry_run else "failed"
    return MirrorFailed(f"{len(failures)} of {len(report.outcomes)} image(s) {verb}: {names}",
                        exit_code=code or 1,
                        hint="see the summary above; the others were mirrored, and a rerun only "
                             "copies what is still missing")


# -- from settings -----------------------------------------------------------------------------

def destination_registry(settings: Settings, *, start: bool = True) -> str | None:
    """``${REGISTRY}`` for the mirror file: the registry :func:`kiln.registry.access.target_registry`
    picks (the embedded local one is started on demand; a dry run only uses a running one).
    ``None`` in CI without a registry: the mirror file may not need ``${REGISTRY}``."""
    try:
        return access.target_registry(settings, start=start).prefix
    except ConfigError:
        return None


def config_variables(settings: Settings, env: Mapping[str, str] | None = None, *,
                     start: bool = True) -> dict[str, str]:
    """What ``${NAME}`` expands to in the mirror file: the environment plus ``REGISTRY``."""
    variables = dict(os.environ if env is None else env)
    registry = destination_registry(settings, start=start)
    if registry:
        variables["REGISTRY"] = registry
    else:
        variables.pop("REGISTRY", None)
    return variables


def load_for_run(settings: Settings, path: Path, *, start: bool = True) -> MirrorConfig:
    """The mirror file with its destinations resolved. ``${REGISTRY}`` comes from the registry
    setting; the embedded local registry is looked up (and started, when ``start``) only when an
    entry's destination actually uses it: a file whose destinations are all given starts none."""
    variables = dict(os.environ)
    configured = access.configured_registry(settings)
    if configured:
        variables["REGISTRY"] = configured
    else:
        variables.pop("REGISTRY", None)
        lenient = load_config(path, variables, require_destination=False)
        entries: list[MirrorImage | MirrorSet] = [*lenient.images, *lenient.tag_sets]
        if any(e.destination is None and "${REGISTRY" in e.destination_text for e in entries):
            variables = config_variables(settings, start=start)
    return load_config(path, variables)


class _Registries:
    """Registry requests (HEADs, tag lists, manifests) through one :class:`RegistryClient` per
    (thread, host)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._all: list[RegistryClient] = []
        self._lock = threading.Lock()

    def _client(self, host: str) -> RegistryClient:
        clients: dict[str, RegistryClient] = getattr(self._local, "clients", None) or {}
        self._local.clients = clients
        if host not in clients:
            clients[host] = RegistryClient.from_settings(host, self.settings)
            with self._lock:
                self._all.append(clients[host])
        return clients[host]

    def __call__(self, ref: ImageRef, reference: str) -> Probe:
        try:
            return self._client(ref.host).head_manifest(ref.repository, reference)
        except KilnError as exc:
            return ProbeError(f"{ref.name}:{reference}: {exc}", exc.exit_code)

    def list_tags(self, ref: ImageRef) -> list[str]:
        return self._client(ref.host).list_tags(ref.repository)

    def get_manifest(self, ref: ImageRef, reference: str) -> Manifest:
        return self._client(ref.host).get_manifest(ref.repository, reference)

    def put_manifest(self, ref: ImageRef, reference: str, manifest: Manifest) -> str:
        return self._client(ref.host).put_manifest(ref.repository, reference, manifest)

    def view(self, ref: ImageRef, *, dry_run: bool) -> promote.Registry:
        """One repository as promote reads and copies artifacts (this thread's client)."""
        return promote.Registry(self._client(ref.host), ref.repository, dry_run=dry_run)

    def close(self) -> None:
        for client in self._all:
            client.close()


def mirror(settings: Settings, *, config: str | Path | None = None, only: Iterable[str] = (),
           jobs: int | None = None, dry_run: bool | None = None,
           live: bool | None = None) -> MirrorReport:
    """The ``mirror`` task: load the config, run, print the summary, raise if anything failed."""
    dry = settings.dry_run if dry_run is None else dry_run
    only = [pattern for pattern in only if pattern]
    path = config_path(settings.project_dir, settings.mirror_config, config)
    loaded: MirrorConfig = load_for_run(settings, path, start=not dry)
    workers = jobs if jobs is not None else loaded.jobs
    if workers < 1:
        raise ConfigError(f"--jobs must be at least 1, not {workers}")
    heads = _Registries(settings)
    try:
        expansion = expand_tag_sets(loaded, list_tag_sets(loaded, heads, only, workers))
        try:
            images = select(expansion.images, only)
        except InputError:
            if not any(r.failed and _set_matches(r.tag_set, only) for r in expansion.sets):
                raise
            images = []  # only a failed tag set matches: reported below
    except BaseException:
        heads.close()
        raise
    progress = Progress(len(images), live=live)
    gate = RateLimitGate(loaded.ratelimit, notify=progress.note)
    probes: list[tuple[str, str]] = []
    probes_lock = threading.Lock()

    def head(ref: ImageRef, reference: str) -> Probe:
        with probes_lock:
            probes.append((ref.name, reference))
        return heads(ref, reference)

    hosts = {i.source.host for i in images} | {
        i.destination.host for i in images if i.destination is not None}
    verb = "planning" if dry else "mirroring"
    console.step(f"{verb} {len(images)} image(s) from {path.name} ({workers} at a time)")
    try:
        with console.section("mirror", f"mirror: {verb} {len(images)} image(s) from {path}"):
            if dry:  # registries: only to look for signatures (HEADs, referrers lists)
                report = run_mirror(images, head=head, copier=None, gate=gate, jobs=workers,
                                    dry_run=True, progress=progress, registries=heads)
            else:
                with skopeo.copier(settings, hosts, retries=loaded.retries) as skopeo_copier:
                    report = run_mirror(images, head=head, copier=skopeo_copier, gate=gate,
                                        jobs=workers, progress=progress, registries=heads)
    finally:
        heads.close()
    _add_sets(report, expansion, only)
    record_outcomes(report)
    console.summary().set_extra("ratelimits", report.to_json()["ratelimits"])
    if not dry:
        console.summary().set_extra("pulls", report.pulls())
    if dry:
        operations = plan_operations(settings, report, probes, hosts, loaded.retries)
        for line in format_report(report, operations).splitlines():
            console.plan(line)
    elif console.json_enabled():
        console.info(format_report(report))
    else:
        console.out(format_report(report))
    failure = failure_of(report)
    if failure is not None:
        raise failure
    return report


def list_tag_sets(config: MirrorConfig, registries: Registries, only: Iterable[str] = (),
                  jobs: int = 4) -> dict[int, Listing]:
    """Each tag set's source tags (``GET /v2/<name>/tags/list``, paginated: not a pull), keyed by
    its index in ``config.tag_sets``; a failure (or no tags at all) is a :class:`ProbeError`."""
    wanted = [n for n, s in enumerate(config.tag_sets) if _set_matches(s, only)]

    def listing(number: int) -> tuple[int, Listing]:
        source = config.tag_sets[number].source
        try:
            tags = registries.list_tags(source)
        except KilnError as exc:
            return number, ProbeError(str(exc), exc.exit_code)
        if not tags:
            return number, ProbeError(f"{source.name} has no tags (does the repository exist?)",
                                      2)
        return number, tags

    if not wanted:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(wanted))),
                            thread_name_prefix="mirror-tags") as pool:
        return dict(pool.map(listing, wanted))


def _set_names(tag_set: MirrorSet) -> set[str]:
    src = tag_set.source
    names = {tag_set.source_text, src.name, src.repository, src.repository.rsplit("/", 1)[-1]}
    if tag_set.destination is not None:
        names |= {tag_set.destination.name, tag_set.destination.repository}
    return names


def _set_matches(tag_set: MirrorSet, patterns: Iterable[str]) -> bool:
    """Whether ``--only`` may select tags of this set (a pattern matching its repository, with
    or without a ``:tag`` part)."""
    wanted = [p for p in patterns if p]
    if not wanted:
        return True
    names = _set_names(tag_set)
    return any(fnmatchcase(name, pattern) or fnmatchcase(name, pattern.rsplit(":", 1)[0])
               for pattern in wanted for name in names)


def _add_sets(report: MirrorReport, expansion: Expansion, only: Iterable[str]) -> None:
    """Put the tag sets' results into the report; a set that failed is a failed outcome."""
    patterns = list(only)
    report.sets = [r for r in expansion.sets if _set_matches(r.tag_set, patterns)]
    for result in report.sets:
        if result.failed:
            tag_set = result.tag_set
            entry = MirrorImage(tag_set.source, tag_set.destination, tag_set.position,
                                tag_set.source_text, tag_set.destination_text,
                                tag_set.explicit_destination, tag_set.rule.describe())
            report.outcomes.append(Outcome(entry, FAILED, f"tag set ({tag_set.rule.describe()}, "
                                           f"line {tag_set.position.line}): {result.error}",
                                           exit_code=result.exit_code or 2))


def plan_operations(settings: Settings, report: MirrorReport, probes: Sequence[tuple[str, str]],
                    hosts: set[str], retries: int) -> dict[str, list[str]]:
    """Per image: the HEAD requests the dry run made, and the copy a real run would make."""
    result: dict[str, list[str]] = {}
    for o in report.outcomes:
        src, dst = o.image.source, o.image.destination
        names = {src.name} | ({dst.name} if dst is not None else set())
        wanted = {src.tag or "latest"} | ({src.digest} if src.digest else set())
        lines = []
        for name, reference in dict.fromkeys(probes):
            if name in names and reference in wanted:
                sep = "@" if reference.startswith("sha256:") else ":"
                lines.append(f"HEAD   {name}{sep}{reference}  (manifest, done)")
        if o.status == WOULD_COPY and o.plan is not None and o.plan.digest and dst is not None:
            source = ImageRef(src.host, src.repository, None, o.plan.digest)
            if media.is_index(o.plan.media_type or ""):
                lines.append(f"would GET   {source} (the index: 1 pull), HEAD each child at "
                             f"{dst.name}, copy only the missing children by digest (1 pull "
                             f"each), then PUT the index as {dst}")
                child = ImageRef(src.host, src.repository, None, "<child digest>")
                argv = skopeo.planned_copy_argv(settings, hosts, skopeo.docker_ref(child),
                                                f"docker://{dst.name}@<child digest>",
                                                retries=retries)
                lines.append("would run per missing child: " + shlex.join(argv))
            else:
                argv = skopeo.planned_copy_argv(settings, hosts, skopeo.docker_ref(source),
                                                skopeo.docker_ref(dst), retries=retries)
                lines.append("would run: " + shlex.join(argv))
        if o.status == WOULD_RETAG and o.plan is not None and o.plan.digest and dst is not None:
            lines.append(f"would GET   {dst.name}@{o.plan.digest} and PUT it as {dst} (the "
                         "destination's own manifest: no pull)")
        result[o.image.label] = lines
    return result
