"""The pipeline context: who runs us (GitLab CI or a laptop) and for which kind of pipeline.

Pure: built from an environment mapping, no I/O, so the tag policy can be tested exhaustively.
:func:`in_ci` is THE answer to "are we in CI?": the settings, the tag policy and the console's
output mode (GitLab sections, no colours) all ask it, so they can never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

LOCAL_PIPELINE_ID = "local"
_TRUE = {"true", "1", "yes"}


def in_ci(env: Mapping[str, str]) -> bool:
    """Whether ``env`` is a CI job's: ``GITLAB_CI`` or ``CI`` is true, or GitLab's
    ``CI_PIPELINE_ID`` is set."""
    return (
        any(env.get(name, "").strip().lower() in _TRUE for name in ("GITLAB_CI", "CI"))
        or bool(env.get("CI_PIPELINE_ID", "").strip())
    )


@dataclass(frozen=True)
class CIContext:
    """GitLab's ``CI_*`` variables that kiln's behaviour depends on."""

    in_ci: bool = False
    pipeline_id: str = LOCAL_PIPELINE_ID
    commit_branch: str | None = None
    default_branch: str | None = None
    commit_tag: str | None = None
    merge_request_iid: str | None = None
    project_name: str | None = None
    job_name: str | None = None
    project_url: str | None = None
    commit_sha: str | None = None
    registry: str | None = None
    registry_image: str | None = None
    registry_user: str | None = None

    @property
    def is_gitlab(self) -> bool:
        return self.in_ci and self.pipeline_id != LOCAL_PIPELINE_ID

    @property
    def is_default_branch(self) -> bool:
        return (
            self.commit_branch is not None
            and self.default_branch is not None
            and self.commit_branch == self.default_branch
        )

    @property
    def is_tag_pipeline(self) -> bool:
        return bool(self.commit_tag)

    @property
    def is_merge_request(self) -> bool:
        return bool(self.merge_request_iid)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CIContext:
        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        # KILN_PIPELINE_ID first: a generated child pipeline (kiln.ci_graph) has an id of its
        # own, and sets KILN_PIPELINE_ID to its parent's so its jobs write the parent's tags.
        pipeline = get("KILN_PIPELINE_ID") or get("CI_PIPELINE_ID") or LOCAL_PIPELINE_ID
        return cls(
            in_ci=in_ci(env),
            pipeline_id=pipeline,
            commit_branch=get("CI_COMMIT_BRANCH"),
            default_branch=get("CI_DEFAULT_BRANCH"),
            commit_tag=get("CI_COMMIT_TAG"),
            merge_request_iid=get("CI_MERGE_REQUEST_IID"),
            project_name=get("CI_PROJECT_NAME"),
            job_name=get("CI_JOB_NAME"),
            project_url=get("CI_PROJECT_URL"),
            commit_sha=get("CI_COMMIT_SHA"),
            registry=get("CI_REGISTRY"),
            registry_image=get("CI_REGISTRY_IMAGE"),
            registry_user=get("CI_REGISTRY_USER"),
        )
