"""Tasks: ``mirror`` (copy upstream images into our registry) and ``lint-refs``."""

from __future__ import annotations

from typing import Any

from kiln import console
from kiln.errors import ConfigError
from kiln.settings import Settings
from kiln.tasks.common import kiln_task


@kiln_task(
    flags=("config", "dry_run", "only", "jobs", "json"),
    iterable=["only"],
    help={
        "config": "mirror configuration file (default: mirrors.yml, or KILN_MIRROR_CONFIG)",
        "dry_run": "print the plan (which tags each tag set selects and why; skip / retag / "
                   "copy / error per image, and why); HEAD requests and tag lists only",
        "only": "mirror only images whose source or destination matches this fnmatch pattern "
                "(repeatable; e.g. 'postgres*', '*/library/debian:*')",
        "jobs": "images copied in parallel (default: 'jobs' in the config, else 4)",
    },
)
def mirror(c: Any, settings: Settings, config: str | None = None,
           only: list[str] | None = None, jobs: str | None = None) -> None:
    """Mirror upstream images (mirrors.yml) with all architectures, preserving digests.

    Up-to-date images cost only HEAD requests (no Docker Hub pulls); tag sets (``tags:`` rules)
    cost a tag listing, no pull; a changed index fetches only the children the destination
    lacks. The run honours the source's rate-limit headers, reports the pulls it spent, carries
    on past failures and exits non-zero if any image failed.
    """
    from kiln.mirror.run import mirror as run_mirror

    workers: int | None = None
    if jobs is not None:
        # a string option: invoke's own int parsing would end in a traceback on "--jobs x"
        if not str(jobs).strip().isdigit():
            raise ConfigError(f"--jobs must be a whole number, not {jobs!r}")
        workers = int(jobs) or None
    run_mirror(settings, config=config, only=only or (), jobs=workers)


@kiln_task(flags=("config", "dry_run", "json"), help={
    "config": "mirror configuration file (default: mirrors.yml, or KILN_MIRROR_CONFIG)",
    "dry_run": "accepted for symmetry: lint-refs only reads files and never writes"})
def lint_refs(c: Any, settings: Settings, config: str | None = None) -> None:
    """Check that build files and CI images pull through the mirror, not from Docker Hub.

    Fails on FROM lines and CI image:/services: entries that use Docker Hub or a registry not
    approved in the mirror configuration, naming file, line and the reference to use instead.
    """
    from kiln.mirror.lint import lint_project

    findings = lint_project(settings, config=config)
    for finding in findings:
        console.record("finding", image=finding.use.resolved, tag=None, digest=None,
                       file=finding.use.file, line=finding.use.line,
                       severity=finding.severity, message=finding.message)
        if console.json_enabled():
            console.info(str(finding))
        else:
            console.out(str(finding))
    console.summary().mark_used()


TASKS = (mirror, lint_refs)
