"""Which tags a pipeline writes (docs/tags.md), as pure functions of the pipeline context.

=================  ==========================================
tag                when
=================  ==========================================
``p-<id>``         every pipeline (build / manifest)
``g-<id>``         the pipeline succeeded (``tag``)
``latest``         ... on the default branch
``<git tag>``      ... in a tag pipeline
``mr-<iid>``       ... in a merge-request pipeline; deploy-mr
``production``     deploy-production
``k-<hex>``        every build: its input key (first 32 hex)
=================  ==========================================

A git tag becomes an image tag only if it is a valid tag name and does not collide with a tag
kiln manages itself (``production``, ``latest``, ``p-<n>``, ``g-<n>``, ``mr-<n>``,
``k-<hex>``): a git tag
called ``production`` must not silently redeploy production.

This module is the only place that spells a tag name kiln writes, ``p-<id>[-<arch>]`` included:
the build engine, ``manifest`` and ``tag`` all ask it.
"""

from __future__ import annotations

import re

from kiln.arch import normalize_arch
from kiln.ci_context import CIContext
from kiln.errors import InputError
from kiln.registry.reference import TAG_RE

PRODUCTION = "production"
LATEST = "latest"
FIXED_TAGS = (PRODUCTION, LATEST)  # tags that never name a pipeline; prune never removes them
KEY_TAG_HEX = 32
# The shapes of kiln's own tags, for the code that must recognise them (prune's policy, the
# git-tag check): p-/g-<pipeline id>[-<arch>], mr-<iid>, and the input-key tag k-<hex>.
_PIPELINE_MANAGED = re.compile(r"^(?:[pg]-[A-Za-z0-9_.]+(?:-[a-z0-9]+)?|mr-\d+)$")
_KEY_TAG = re.compile(rf"^k-[0-9a-f]{{{KEY_TAG_HEX}}}$")
_NUMBERED_PIPELINE = re.compile(r"^[pg]-(\d+)(?:-[a-z0-9]+)?$")
_PIPELINE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,100}$")
_IID = re.compile(r"^[0-9]{1,18}$")


def _pipeline(pipeline_id: str) -> str:
    if not _PIPELINE_ID.match(pipeline_id):
        raise InputError(f"invalid pipeline id {pipeline_id!r} (CI_PIPELINE_ID)",
                         hint="a pipeline id is a number in GitLab, 'local' outside CI; "
                              "letters, digits, '.', '_' or '-'")
    return pipeline_id


def pipeline_tag(pipeline_id: str, arch: str | None = None) -> str:
    """``p-<pipeline id>``, or ``p-<pipeline id>-<arch>`` for one architecture's image."""
    tag = f"p-{_pipeline(pipeline_id)}"
    return f"{tag}-{normalize_arch(arch)}" if arch else tag


def pipeline_image_ref(registry: str, image: str, pipeline_id: str,
                       arch: str | None = None) -> str:
    """``<registry>/<image>:p-<id>[-<arch>]``: what a build pushes (and names in local storage)."""
    return f"{registry.rstrip('/')}/{image}:{pipeline_tag(pipeline_id, arch)}"


def source_tag(ci: CIContext) -> str:
    """``p-<pipeline id>``: the image (or index) every later tag copies."""
    return pipeline_tag(ci.pipeline_id)


def arch_tag(ci: CIContext, arch: str) -> str:
    """``p-<pipeline id>-<arch>``: one architecture's image, input of ``manifest``."""
    return pipeline_tag(ci.pipeline_id, arch)


def mr_tag(iid: str | None) -> str:
    """``mr-<iid>`` for a merge request (CI_MERGE_REQUEST_IID)."""
    if not iid:
        raise InputError(
            "no merge request: CI_MERGE_REQUEST_IID is not set",
            hint="run deploy-mr / stop-mr in a merge-request pipeline, or set "
                 "CI_MERGE_REQUEST_IID=<iid> (or pass --mr <iid>)",
        )
    if not _IID.match(iid):
        raise InputError(f"invalid merge request iid {iid!r}", hint="expected a number, e.g. 7")
    return f"mr-{iid}"


def git_tag_as_image_tag(tag: str) -> str:
    """A git tag usable as an image tag, or :class:`InputError` saying why not."""
    if not TAG_RE.match(tag):
        raise InputError(
            f"git tag {tag!r} is not a valid image tag",
            hint="image tags are 1-128 characters of letters, digits, '_', '.' and '-', not "
                 "starting with '.' or '-' (no '/', '+' or spaces); rename the git tag",
        )
    if is_reserved(tag):
        raise InputError(
            f"git tag {tag!r} collides with a tag kiln manages (production, latest, p-<id>, "
            "g-<id>, mr-<iid>, k-<hex>)",
            hint="rename the git tag (for example v1.2.3)",
        )
    return tag


def tags_for(ci: CIContext) -> tuple[str, ...]:
    """The tags ``tag`` writes for this pipeline, in a stable order. A failed pipeline never
    gets here: the ``.tag`` job runs only ``on_success`` (ci/kiln.yml), after the test stage."""
    tags = [f"g-{_pipeline(ci.pipeline_id)}"]
    if ci.is_default_branch:
        tags.append(LATEST)
    if ci.commit_tag:
        tags.append(git_tag_as_image_tag(ci.commit_tag))
    if ci.merge_request_iid:
        tags.append(mr_tag(ci.merge_request_iid))
    return tuple(tags)


def is_pipeline_managed(tag: str) -> bool:
    """A tag kiln writes for a pipeline or merge request: ``p-<id>[-<arch>]``, ``g-<id>``,
    ``mr-<iid>`` (prune may remove these)."""
    return bool(_PIPELINE_MANAGED.match(tag))


def pipeline_number(tag: str) -> str | None:
    """The GitLab pipeline number of ``p-<n>[-<arch>]`` / ``g-<n>`` (as written), else ``None``
    (prune orders pipelines by it)."""
    match = _NUMBERED_PIPELINE.match(tag)
    return match[1] if match else None


def is_key_tag(tag: str) -> bool:
    """``k-<32 hex>``: a build's input-key tag (:func:`key_tag`)."""
    return bool(_KEY_TAG.match(tag))


def is_reserved(tag: str) -> bool:
    """A tag only kiln may write: ``production``, ``latest``, the pipeline tags, ``k-<hex>``."""
    return tag in FIXED_TAGS or is_pipeline_managed(tag) or is_key_tag(tag)


def key_tag(key: str) -> str:
    """``k-<first 32 hex of the input key>``: the tag that finds a build by its input key
    (one HEAD request). 128 bits keep accidental collisions out of reach."""
    algorithm, _, hexdigest = key.partition(":")
    if algorithm != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
        raise InputError(f"invalid input key {key!r}", hint="expected sha256:<64 hex digits>")
    return f"k-{hexdigest[:KEY_TAG_HEX]}"
