"""``prune``: remove old tags of an image without ever removing a sibling.

The plan is :mod:`kiln.retention`'s, made from one reading of the repository
(:mod:`kiln.inventory`). Carrying it out (``docs/tags.md``):

1. Ask whether the registry deletes at all (a DELETE of a digest nobody has: 405 means
   deletes are disabled). If not, say so and stop: nothing was changed.
2. A removed tag whose digest stays (a kept tag, a kept index or a kept image still needs it)
   goes the way ``stop-mr`` removes ``mr-<iid>``: the tag is pointed at a unique throwaway
   manifest, and that manifest's digest is deleted; only that tag pointed at it.
3. Digests that only removed tags led to are deleted (artifacts, artifact tags' manifests,
   images, indexes: an interrupted run leaves nothing the rerun cannot find);
   deleting a digest removes the tags on it, all of which the plan removes. Just before, the
   tags are listed again: a tag that appeared since the reading protects its digest.
4. The tags are listed once more: every kept tag must still be there, every removed one gone
   (a removed tag still listed but pointing at nothing, distribution's delete race, is removed
   again through a throwaway manifest).

Each step is idempotent. An interrupted run leaves at worst a tag on a throwaway manifest (the
next run recognises it by its annotation and finishes it) or a digest not yet deleted (the next
run plans it again).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from kiln import console
from kiln.errors import RegistryError
from kiln.inventory import Reader, read_repository
from kiln.promote import (
    ClientFactory,
    Destination,
    Op,
    Registry,
    destinations_for,
    point_away_and_delete,
)
from kiln.registry.client import RegistryClient
from kiln.retention import Policy, PrunePlan, RepositoryState, plan_prune, removal_steps
from kiln.settings import Settings


@dataclass
class Outcome:
    """What one destination's prune did (or, in a dry run, would do)."""

    destination: str
    plan: PrunePlan
    state: RepositoryState
    removed_tags: list[str]
    deleted_digests: list[str]
    requests: int = 0


def _protect_new_tags(reg: Registry, state: RepositoryState, doomed: Sequence[str]
                      ) -> list[str]:
    """``doomed`` minus the digests that a tag pushed since the reading leads to."""
    listed = set(reg.tags())
    new = sorted(listed - set(state.tags))
    if not new:
        return list(doomed)
    reader = Reader(reg.client, reg.repository)
    fresh: dict[str, str] = {}
    for tag in new:
        manifest = reader.manifest_of_tag(tag)
        if manifest is not None:
            reader.facts(manifest)
            fresh[tag] = manifest.digest
    needed = RepositoryState(state.name, fresh, dict(reader.images)).closure(fresh.values())
    spared = [d for d in doomed if d in needed]
    for digest in spared:
        console.warn(f"{reg.name}@{digest}: a tag pushed during the prune points at it; kept")
    return [d for d in doomed if d not in needed]


def prune_repository(reg: Registry, policy: Policy, *, now: datetime | None = None,
                     progress: Callable[[int, int], None] | None = None) -> Outcome:
    """Plan and (unless ``reg.dry_run``) carry out the prune of one repository."""
    start = reg.client.request_count
    state = read_repository(reg.client, reg.repository, progress=progress)
    plan = plan_prune(state, policy, now or datetime.now(UTC), reg.name)
    outcome = Outcome(reg.name, plan, state, [], [])
    if not plan.removed or reg.dry_run:
        outcome.requests = reg.client.request_count - start
        return outcome
    if not reg.client.deletes_allowed(reg.repository):
        raise RegistryError(
            f"{reg.name}: the registry refuses deletes (HTTP 405 to a DELETE); prune changed "
            "nothing",
            hint="enable deletes on the registry (docker-registry: storage.delete.enabled: "
                 "true), or remove the tags in the registry's own UI/API")
    throwaway, _ = removal_steps(plan, state)
    point_away_and_delete(reg, throwaway)
    doomed = _protect_new_tags(reg, state, plan.delete)
    for digest in doomed:
        reg.delete(digest)
    outcome.deleted_digests = list(doomed)

    after = set(reg.tags())
    removed = {d.tag for d in plan.removed}
    dangling = [tag for tag in sorted(removed & after) if reg.head(tag) is None]
    if dangling:
        # listed, pointing at nothing: distribution's delete race (docs/host-facts.md);
        # re-pointing at a throwaway and deleting that clears it
        point_away_and_delete(reg, dangling)
        after = set(reg.tags())
    vanished = [d for d in plan.kept if d.tag not in after and d.digest]
    lost = [d for d in vanished if reg.head(d.digest) is None]
    if vanished and not lost:
        console.warn(f"{reg.name}: {', '.join(d.tag for d in vanished)} disappeared during the "
                     "prune (removed concurrently by another job?); their images are untouched")
    if lost:
        raise RegistryError(
            f"{reg.name}: kept tags disappeared with their images during the prune: "
            f"{', '.join(d.tag for d in lost)}",
            hint="the registry deletes in an unexpected way (or another job deleted them); "
                 "restore them with 'invoke tag' from their p-<pipeline> image")
    outcome.removed_tags = sorted(removed - after)
    leftover = sorted(removed & after)
    if leftover:
        console.warn(f"{reg.name}: still listed after the prune (re-pointed meanwhile?): "
                     f"{', '.join(leftover)}; rerun prune to plan them again")
    outcome.requests = reg.client.request_count - start
    return outcome


def prune(settings: Settings, image: str, registry: str, policy: Policy, *,
          client_factory: ClientFactory, log: Callable[[Op], None],
          now: datetime | None = None) -> list[Outcome]:
    """Prune ``image`` at every destination it is published to (each on its own reading)."""
    outcomes = []
    for dest in destinations_for(settings, image, registry):
        client: RegistryClient = client_factory(dest.host)
        with client:
            reg = Registry(client, dest.repository, dry_run=settings.dry_run, log=log)
            outcomes.append(prune_repository(reg, policy, now=now))
    return outcomes


__all__ = ["Destination", "Outcome", "prune", "prune_repository"]
