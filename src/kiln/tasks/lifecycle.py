"""Registry lifecycle tasks: ``prune`` (retention without removing a sibling) and ``tags`` (what
is where). Thin: the policy comes from settings, the image's ``prune`` table and the flags;
:mod:`kiln.prune` and :mod:`kiln.inventory` do the work."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kiln import console, inventory
from kiln import prune as pruning
from kiln.promote import Destination, destinations_for
from kiln.registry.client import RegistryClient
from kiln.retention import Policy, plan_rows, resolve_policy
from kiln.settings import DRY_RUN_HELP, Settings
from kiln.tasks.common import kiln_task
from kiln.tasks.registry import _factory, _image, _log, _registry


def policy_for(settings: Settings, image: str, **flags: Any) -> Policy:
    """defaults < ``prune-*`` settings < ``[tool.kiln.images.<image>.prune]`` < flags."""
    pyproject = settings.project_dir / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8") if pyproject.is_file() else ""
    return resolve_policy(
        defaults={"match": settings.prune_match, "keep": settings.prune_keep,
                  "older-than": settings.prune_older_than,
                  "keep-tags": settings.prune_keep_tags, "open-mrs": settings.prune_open_mrs},
        table=settings.image_settings(image).prune,
        table_name=f"tool.kiln.images.{image}.prune", file_name=str(pyproject),
        file_text=text, flags=flags)


def _print_plan(outcome: pruning.Outcome, now: datetime, dry_run: bool) -> None:
    rows = plan_rows(outcome.plan, now)
    lines = [["TAG", "DIGEST", "AGE", "ACTION", "WHY"]]
    lines += [[inventory.short_tag(r["tag"]), inventory.short_digest(r["digest"]) or "-", r["age"],
               r["action"], r["why"]]
              for r in rows]
    text = inventory.format_table(lines)
    for line in text.splitlines():
        if dry_run:
            console.plan(line)
        elif console.json_enabled():
            console.info(line)
        else:
            console.out(line)


@kiln_task(
    flags=("image", "registry", "dry_run", "match", "keep", "older_than", "keep_tag", "open_mr",
           "json"),
    iterable=["match", "keep_tag", "open_mr"],
    help={
        "dry_run": DRY_RUN_HELP + " (prints the plan: tag, digest, age, keep/remove, why)",
        "match": "tags prune may remove, an fnmatch pattern (repeatable; default prune-match: "
                 "'p-*' 'g-*'); only kiln's own tags (p-, g-, mr-) are ever removed",
        "keep": "keep the newest N of each pattern (pipelines by number, other tags by "
                "creation time; default prune-keep: 10)",
        "older_than": "keep anything younger than this age, e.g. 30d, 12h, 2w (default "
                      "prune-older-than: 30d)",
        "keep_tag": "never remove tags matching this pattern (repeatable); production, latest "
                    "and git-tag tags are never removed anyway",
        "open_mr": "iid of an open merge request: its mr-<iid> stays (repeatable)",
    },
)
def prune(c: Any, settings: Settings, match: list[str] | None = None, keep: str | None = None,
          older_than: str | None = None, keep_tag: list[str] | None = None,
          open_mr: list[str] | None = None) -> None:
    """Remove old tags of an image by policy; never a sibling tag, never a digest still needed."""
    name = _image(settings)
    policy = policy_for(settings, name, match=match, keep=keep, **{"older-than": older_than},
                        **{"keep-tags": keep_tag, "open-mrs": open_mr})
    registry = _registry(settings)
    now = datetime.now(UTC)
    console.step(f"prune {name}: {policy.describe()} ({policy.source})")
    with console.section(f"prune_{name}", f"prune {name}"):
        outcomes = pruning.prune(settings, name, registry, policy,
                                 client_factory=_factory(settings), log=_log(settings), now=now)
    for outcome in outcomes:
        _print_plan(outcome, now, settings.dry_run)
        for decision in outcome.plan.decisions:
            done = not settings.dry_run and decision.tag in outcome.removed_tags
            action = ("removed" if done else "planned") if decision.action == "remove" \
                else "kept"
            console.record(action, image=outcome.destination, tag=decision.tag,
                           digest=decision.digest or None, decision=decision.action,
                           why=decision.why,
                           age=decision.age(now))
        removed = len(outcome.plan.removed) if settings.dry_run else len(outcome.removed_tags)
        digests = outcome.plan.delete if settings.dry_run else outcome.deleted_digests
        verb = "would remove" if settings.dry_run else "removed"
        console.step(f"prune {outcome.destination}: {verb} {removed} of "
                     f"{len(outcome.plan.decisions)} tags and {len(digests)} digests "
                     f"({outcome.requests} registry requests)")
    console.summary().set_extra("deleted_digests", sorted(
        d for o in outcomes for d in (o.plan.delete if settings.dry_run else o.deleted_digests)))
    console.summary().mark_used()


@kiln_task(flags=("image", "registry", "json"), help={
    "dry_run": "accepted for symmetry: tags only reads"})
def tags(c: Any, settings: Settings) -> None:
    """What is where: the image's tags grouped by digest (architectures, created, size)."""
    name = _image(settings)
    registry = _registry(settings)
    for dest in destinations_for(settings, name, registry):
        with console.activity(f"reading {dest}"), \
                RegistryClient.from_settings(dest.host, settings) as client:
            state = inventory.read_repository(client, dest.repository)
        rows = inventory.rows(state)
        for row in rows:
            console.record("listed", image=dest.name, tag=None, digest=row.digest,
                           tags=list(row.tags), media_type=row.media_type,
                           architectures=list(row.arches),
                           created=row.created.isoformat() if row.created else None,
                           size=row.size)
        for tag in state.dangling:
            console.record("dangling", image=dest.name, tag=tag, digest=None)
        text = f"{dest}\n" + inventory.format_table(inventory.table(state))
        if state.dangling:
            text += ("\nlisted but pointing at nothing (a half-done delete; prune or stop-mr "
                     f"clears them): {', '.join(state.dangling)}")
        if console.json_enabled():
            console.info(text)
        else:
            console.out(text)
    console.summary().mark_used()


TASKS = (prune, tags)

__all__ = ["Destination", "TASKS", "policy_for", "prune", "tags"]
