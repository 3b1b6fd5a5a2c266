"""Registry-side tasks: manifest, tag, deploy-production, deploy-mr, stop-mr,
deploy-production-tag. Thin: settings in, :mod:`kiln.promote` / :mod:`kiln.gitops` do the work."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kiln import console, gitops, promote
from kiln.errors import ConfigError, InputError
from kiln.promote import Op, Registry, Result
from kiln.registry import access
from kiln.registry.client import RegistryClient
from kiln.settings import DRY_RUN_HELP, Settings
from kiln.tag_policy import PRODUCTION, mr_tag, source_tag, tags_for
from kiln.tasks.common import kiln_task

_FLAGS = ("image", "registry", "dry_run", "json")
_MR_FLAGS = ("image", "registry", "dry_run", "mr", "json")
_HELP = {
    "dry_run": DRY_RUN_HELP + " (reads are done to plan; every write is printed, not sent)",
}
_MR_HELP = _HELP | {"mr": "merge request iid (default CI_MERGE_REQUEST_IID)"}


def _registry(settings: Settings) -> str:
    """The source registry prefix, as :func:`kiln.registry.access.target_registry` picks it."""
    chosen = access.target_registry(settings)
    if chosen.prefix is None:
        raise ConfigError("the embedded local registry is not running (dry run: not starting it)",
                          hint="run 'invoke registry-start' or a build first")
    return chosen.prefix


def _image(settings: Settings) -> str:
    if not settings.image:
        raise InputError("no image given", hint="pass --image NAME or set IMAGE_NAME")
    return settings.image


def _log(settings: Settings) -> Any:
    """Every registry operation: the plan's lines in a dry run, progress lines otherwise."""
    def log(op: Op) -> None:
        if settings.dry_run:
            console.plan(str(op))
        else:
            console.info(f"  {op}")
    return log


def _factory(settings: Settings) -> promote.ClientFactory:
    return lambda host: RegistryClient.from_settings(host, settings)


_ACTIONS = {"written": "tagged", "copied": "copied", "removed": "removed", "absent": "absent",
            "planned": "planned"}


def _report(settings: Settings, what: str, results: Sequence[Result]) -> None:
    """The outcome: one line per tag for people, one ``results`` entry each for ``--json``."""
    for r in results:
        console.record(_ACTIONS.get(r.status, r.status), image=r.destination, tag=r.tag,
                       digest=r.digest or None, status=r.status)
        digest = f" -> {r.digest}" if r.digest else ""
        console.step(f"{what}: {r.destination}:{r.tag}{digest} ({r.status})")


def _plan_header(settings: Settings, what: str, image: str) -> None:
    if settings.dry_run:
        console.plan(f"# kiln {what} plan for {image} (dry run: reads are done to plan, "
                     "writes are only printed)")


def _promote(settings: Settings, what: str, tags: Sequence[str]) -> None:
    image = _image(settings)
    registry = _registry(settings)
    if not tags:
        console.step(f"{what}: nothing to tag for this pipeline")
        console.summary().mark_used()
        return
    _plan_header(settings, what, image)
    with console.section(f"{what}_{image}", f"{what} {image}: {', '.join(tags)}"):
        results = promote.promote(settings, image, registry, tags,
                                  source_ref=source_tag(settings.ci),
                                  client_factory=_factory(settings), log=_log(settings))
    _report(settings, what, results)


@kiln_task(flags=("image", "registry", "dry_run", "arches", "json"), help=_HELP)
def manifest(c: Any, settings: Settings) -> None:
    """Assemble the multi-arch index p-<id> from p-<id>-<arch> (no layer moves)."""
    name = _image(settings)
    dest = promote.Destination.from_prefix(_registry(settings), name)
    promote.check_private(settings, name, dest)
    _plan_header(settings, "manifest", name)
    with console.section(f"manifest_{name}", f"manifest {dest}: "
                         f"{' '.join(settings.arches) or '(no architectures)'}"), \
            RegistryClient.from_settings(dest.host, settings) as client:
        reg = Registry(client, dest.repository, dry_run=settings.dry_run, log=_log(settings))
        result = promote.assemble_index(reg, settings.ci, settings.arches,
                                        secret_allow=settings.secret_allow)
    _report(settings, "manifest", [result])


@kiln_task(flags=_FLAGS, help=_HELP)
def tag(c: Any, settings: Settings) -> None:
    """Tag p-<id> for this pipeline: g-<id>, latest, <git tag>, mr-<iid> (docs/tags.md)."""
    _promote(settings, "tag", tags_for(settings.ci))


@kiln_task(flags=_FLAGS, help=_HELP)
def deploy_production(c: Any, settings: Settings) -> None:
    """Point the 'production' tag at p-<id>."""
    _promote(settings, "deploy-production", (PRODUCTION,))


@kiln_task(flags=_MR_FLAGS, help=_MR_HELP)
def deploy_mr(c: Any, settings: Settings, mr: str | None = None) -> None:
    """Point the 'mr-<iid>' tag at p-<id> (the merge request's environment)."""
    _promote(settings, "deploy-mr", (mr_tag(mr or settings.ci.merge_request_iid),))


@kiln_task(flags=_MR_FLAGS, help=_MR_HELP)
def stop_mr(c: Any, settings: Settings, mr: str | None = None) -> None:
    """Remove the 'mr-<iid>' tag and nothing else (sibling tags on the digest stay)."""
    target = mr_tag(mr or settings.ci.merge_request_iid)
    name = _image(settings)
    registry = _registry(settings)
    _plan_header(settings, "stop-mr", name)
    with console.section(f"stop_mr_{name}", f"stop-mr {name}: remove {target}"):
        results = promote.unpromote(settings, name, registry, target,
                                    client_factory=_factory(settings), log=_log(settings))
    _report(settings, "stop-mr", results)


@kiln_task(flags=("remote", "dry_run", "json"), help={
    "remote": "git remote to push to (default origin)",
    "dry_run": "print the git commands; change nothing"})
def deploy_production_tag(c: Any, settings: Settings, remote: str = "origin") -> None:
    """Force-move the git tag 'production' to HEAD and push it (GITLAB_JOB_DEPLOY_PRODUCTION_ACCESS_TOKEN)."""
    with console.section("deploy_production_tag", f"deploy-production-tag: push production "
                         f"to {remote}"):
        sha = gitops.deploy_production_tag(settings.project_dir, remote=remote,
                                           dry_run=settings.dry_run)
    console.record("planned" if settings.dry_run else "tagged", image=f"git:{remote}",
                   tag=gitops.TAG, digest=None, commit=sha)
    console.step(f"deploy-production-tag: production -> {sha}"
                 + (" (dry run)" if settings.dry_run else ""))


TASKS = (manifest, tag, deploy_production, deploy_mr, stop_mr, deploy_production_tag)
