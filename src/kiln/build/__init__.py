"""Building images: ``builds/<image>.in`` -> Containerfile -> ``buildah build`` -> push.

Split like :mod:`kiln.mirror`: :mod:`kiln.build.graph` (the image graph, pure),
:mod:`kiln.build.plan` (input keys, pinned Containerfiles, steps; pure) and
:mod:`kiln.build.run` (the I/O: tools and registry). This package re-exports what the tasks and
tests use, so ``from kiln import build`` keeps working.
"""

from kiln import proc
from kiln.build.graph import ImageGraph, Node
from kiln.build.plan import (
    KEY_LABEL,
    IgnoreRules,
    Source,
    Step,
    Target,
    build_arguments,
    build_file_for,
    context_entries,
    copy_sources,
    input_key,
    list_images,
    make_graph,
    oci_labels,
    own_dependencies,
    parse_jobs,
    pin_from_lines,
    platform_mismatch,
    push_format,
    strip_userinfo,
    upstream_names,
    utc_now,
)
from kiln.build.run import (
    CA_TARGET,
    LOCAL_PLACEHOLDER,
    BuildResult,
    Plan,
    _build_failure,
    _push_failure,
    build,
    build_command,
    classify_failure,
    containerfile_path,
    describe_graph,
    plan_graph,
    preprocess_image,
    push_command,
    refuse_credentials,
    refuse_secret_config,
    registry_access,
    registry_hosts,
    resolve_target,
    scan_built_image,
    source_epoch,
    source_metadata,
    tls_verify_for,
)
from kiln.buildah import Buildah
from kiln.tag_policy import pipeline_image_ref as image_ref
from kiln.tag_policy import pipeline_tag

__all__ = [
    "CA_TARGET", "KEY_LABEL", "LOCAL_PLACEHOLDER", "BuildResult", "Buildah", "IgnoreRules",
    "ImageGraph", "Node", "Plan", "Source", "Step", "Target", "_build_failure", "_push_failure",
    "build", "build_arguments", "build_command", "build_file_for", "classify_failure",
    "containerfile_path", "context_entries", "copy_sources", "describe_graph", "image_ref",
    "input_key", "list_images", "make_graph", "oci_labels", "own_dependencies", "parse_jobs",
    "pin_from_lines", "pipeline_tag", "plan_graph", "platform_mismatch", "preprocess_image",
    "proc", "push_command", "push_format", "refuse_credentials", "refuse_secret_config",
    "registry_access", "registry_hosts", "resolve_target", "scan_built_image", "source_epoch",
    "source_metadata", "strip_userinfo", "tls_verify_for", "upstream_names", "utc_now",
]
