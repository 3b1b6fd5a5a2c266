"""Building images: ``builds/<image>.in`` -> Containerfile -> ``buildah build`` -> push.

Split like :mod:`kiln.mirror`: :mod:`kiln.build.graph` (the image graph, pure),
:mod:`kiln.build.plan` (input keys and build steps, pure) and :mod:`kiln.build.run` (the I/O).
This package re-exports what the tasks and tests use, so ``from kiln import build`` keeps working.
"""

from kiln import proc
from kiln.build.graph import ImageGraph, Node
from kiln.build.run import (
    CA_TARGET,
    LOCAL_PLACEHOLDER,
    BuildResult,
    Step,
    Target,
    _build_failure,
    _push_failure,
    build,
    build_arguments,
    build_command,
    build_file_for,
    classify_failure,
    containerfile_path,
    list_images,
    oci_labels,
    own_dependencies,
    plan_builds,
    plan_image,
    platform_mismatch,
    preprocess_image,
    push_command,
    push_format,
    refuse_credentials,
    refuse_secret_config,
    registry_access,
    registry_hosts,
    resolve_target,
    scan_built_image,
    source_metadata,
    strip_userinfo,
    tls_verify_for,
    upstream_names,
    utc_now,
)
from kiln.buildah import Buildah
from kiln.tag_policy import pipeline_image_ref as image_ref
from kiln.tag_policy import pipeline_tag

__all__ = [
    "CA_TARGET", "LOCAL_PLACEHOLDER", "BuildResult", "Buildah", "ImageGraph", "Node", "Step",
    "Target", "_build_failure", "_push_failure", "build", "build_arguments", "build_command",
    "build_file_for", "classify_failure", "containerfile_path", "image_ref", "list_images",
    "oci_labels", "own_dependencies", "pipeline_tag", "plan_builds", "plan_image",
    "platform_mismatch", "preprocess_image", "proc", "push_command", "push_format",
    "refuse_credentials", "refuse_secret_config", "registry_access", "registry_hosts",
    "resolve_target", "scan_built_image", "source_metadata", "strip_userinfo", "tls_verify_for",
    "upstream_names", "utc_now",
]
