"""The image graph and the input key, pure: kiln.build.graph (order, levels, affected part,
renderings) and kiln.build.plan (what goes into a key: context files by content, ignore files,
build args, arch, FROM digests; pinned FROM lines; --jobs). No process, no network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kiln.build.graph import ImageGraph, Node, find_cycle
from kiln.build.plan import (
    IgnoreRules,
    context_entries,
    copy_sources,
    declare_after_from,
    input_key,
    key_build_args,
    parse_jobs,
    pin_from_lines,
    strip_reference,
)
from kiln.containerfile import parse_from_lines
from kiln.errors import InputError
from kiln.tag_policy import git_tag_as_image_tag, key_tag


def node(image: str, *deps: str, **extra: object) -> Node:
    return Node(image, ("amd64",), tuple(sorted(deps)), f"builds/{image}.in", **extra)  # type: ignore[arg-type]


GRAPH = ImageGraph({n.image: n for n in (
    node("base"), node("python", "base"), node("backend", "python"), node("busybox"),
    node("tools", "base", "busybox"), node("buildah", "base"))})


# -- the graph ---------------------------------------------------------------------------------

def test_order_puts_dependencies_first_and_ties_by_name() -> None:
    assert GRAPH.order() == ["base", "busybox", "buildah", "python", "tools", "backend"]
    assert GRAPH.levels() == [["base", "busybox"], ["buildah", "python", "tools"], ["backend"]]


def test_affected_is_the_roots_and_what_they_need() -> None:
    assert GRAPH.affected(["backend"]).order() == ["base", "python", "backend"]
    assert GRAPH.affected(["tools", "busybox"]).order() == ["base", "busybox", "tools"]
    with pytest.raises(InputError, match="unknown image 'nope'"):
        GRAPH.affected(["nope"])


def test_dependents_are_transitive() -> None:
    assert GRAPH.dependents("base") == {"python", "backend", "tools", "buildah"}
    assert GRAPH.dependents("busybox") == {"tools"}
    assert GRAPH.dependents("backend") == set()
    assert GRAPH.dependencies("backend") == {"python", "base"}


def test_a_cycle_or_a_missing_node_cannot_make_a_graph() -> None:
    with pytest.raises(InputError, match="cycle between images: a -> b -> a"):
        ImageGraph({"a": node("a", "b"), "b": node("b", "a")})
    with pytest.raises(InputError, match="builds/a.in: a is built FROM b"):
        ImageGraph({"a": node("a", "b")})
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": []}) is None


def test_json_has_nodes_edges_keys_and_reuse() -> None:
    key = "sha256:" + "ab" * 32
    graph = GRAPH.affected(["python"]).replace(node("base", key=key, reusable=True,
                                                    changed=False))
    data = json.loads(graph.to_json())
    assert data["order"] == ["base", "python"]
    assert data["edges"] == [{"image": "python", "from": "base"}]
    assert data["nodes"][0] == {"image": "base", "arches": ["amd64"], "deps": [],
                                "file": "builds/base.in", "key": key, "reusable": True,
                                "changed": False}
    assert graph.changed() == ["python"]


def test_mermaid_draws_edges_and_highlights_what_must_be_built() -> None:
    graph = GRAPH.affected(["backend"]).replace(node("base", reusable=True, changed=False))
    text = graph.to_mermaid()
    assert text.splitlines()[0] == "flowchart TD"
    assert '  n0["base<br/>reused"]' in text and '  n2["backend<br/>changed"]' in text
    assert "  n0 --> n1" in text and "  n1 --> n2" in text
    assert "  class n1,n2 changed" in text and "  class n0 reused" in text


def test_table_indents_by_level() -> None:
    lines = GRAPH.affected(["backend"]).to_table().splitlines()
    assert lines[0].split() == ["level", "image", "from", "arches", "key", "state"]
    assert lines[3].startswith("2          backend  python")


# -- what goes into the key --------------------------------------------------------------------

CONTAINERFILE = """\
ARG UPSTREAM_REGISTRY=docker.io
ARG REGISTRY BASE_IMAGE_TAG
FROM ${UPSTREAM_REGISTRY}/library/busybox:latest AS tools
FROM ${REGISTRY}/base:${BASE_IMAGE_TAG}
ARG APP=app
COPY --from=tools /bin/sh /sh
COPY --chown=1000 services/${APP} /code/
ADD ["conf/a.conf", "/etc/"]
COPY <<EOF /notes
text
EOF
RUN echo $APP
"""


def test_copy_sources_are_context_paths_only() -> None:
    assert copy_sources(CONTAINERFILE, {}) == ["services/app", "conf/a.conf"]
    assert copy_sources(CONTAINERFILE, {"APP": "other"}) == ["services/other", "conf/a.conf"]


def make_context(root: Path) -> Path:
    (root / "services" / "app" / "cache").mkdir(parents=True)
    (root / "services" / "app" / "main.py").write_text("print('hi')\n")
    (root / "services" / "app" / "cache" / "junk").write_text("x")
    (root / "services" / "app" / "run.sh").write_text("#!/bin/sh\n")
    (root / "services" / "app" / "run.sh").chmod(0o755)
    (root / "conf").mkdir()
    (root / "conf" / "a.conf").write_text("a=1\n")
    (root / "unrelated.txt").write_text("not copied\n")
    return root


def key_of(root: Path, *, args: dict[str, str] | None = None, arch: str = "amd64",
           digest: str = "sha256:" + "1" * 64, text: str = CONTAINERFILE) -> str:
    entries = context_entries(root, copy_sources(text, args or {}))
    return input_key(containerfile=text, build_args=args or {}, arch=arch,
                     image_format="docker",
                     from_digests=[("up/library/busybox:latest", digest)], context=entries)


def test_key_depends_on_content_not_mtime(tmp_path: Path) -> None:
    root = make_context(tmp_path)
    first = key_of(root)
    assert first.startswith("sha256:") and len(first) == 71
    main = root / "services" / "app" / "main.py"
    os.utime(main, (1, 1))
    main.write_text("print('hi')\n")  # touched, same content
    assert key_of(root) == first
    (root / "unrelated.txt").write_text("changed, but no COPY reads it\n")
    assert key_of(root) == first
    main.write_text("print('bye')\n")
    assert key_of(root) != first


def test_key_sees_new_files_modes_and_links(tmp_path: Path) -> None:
    root = make_context(tmp_path)
    first = key_of(root)
    (root / "services" / "app" / "run.sh").chmod(0o644)
    second = key_of(root)
    assert second != first
    (root / "services" / "app" / "new.py").write_text("")
    third = key_of(root)
    assert third != second
    (root / "services" / "app" / "link").symlink_to("main.py")
    assert key_of(root) != third


def test_ignore_file_keeps_ignored_files_out_of_the_key(tmp_path: Path) -> None:
    root = make_context(tmp_path)
    (root / ".dockerignore").write_text("# comment\n**/cache\n*.md\n")
    first = key_of(root)
    (root / "services" / "app" / "cache" / "junk").write_text("changed")
    assert key_of(root) == first
    (root / ".containerignore").write_text("services/app/cache\n")  # wins over .dockerignore
    assert key_of(root) == first


def test_ignore_rules_follow_dockerignore() -> None:
    rules = IgnoreRules.parse("*.log\n!keep.log\nbuild/\n/docs/**/*.tmp\nsub/?.txt\n")
    assert rules.excluded("a.log") and not rules.excluded("keep.log")
    assert not rules.excluded("dir/a.log")  # patterns are anchored at the context root
    assert rules.excluded("build/x/y.o")  # a folder's contents go with it
    assert rules.excluded("docs/a/b/c.tmp") and rules.excluded("docs/c.tmp")
    assert rules.excluded("sub/a.txt") and not rules.excluded("sub/ab.txt")


def test_key_depends_on_args_arch_from_digest_and_containerfile(tmp_path: Path) -> None:
    root = make_context(tmp_path)
    first = key_of(root)
    assert key_of(root, args={"APP": "app"}) != first  # a build arg that reaches the image
    assert key_of(root, arch="arm64") != first
    assert key_of(root, digest="sha256:" + "2" * 64) != first
    assert key_of(root, text=CONTAINERFILE.replace("echo $APP", "echo $APP!")) != first


def test_location_args_count_only_where_they_reach_the_image() -> None:
    args = {"REGISTRY": "r.example/g", "BASE_IMAGE_TAG": "p-7", "UPSTREAM_REGISTRY": "docker.io",
            "VERSION": "1"}
    assert key_build_args(CONTAINERFILE, args) == {"VERSION": "1"}
    text = CONTAINERFILE + "RUN echo ${BASE_IMAGE_TAG} > /tag\n"
    assert key_build_args(text, args) == {"BASE_IMAGE_TAG": "p-7", "VERSION": "1"}


def test_missing_copy_source_and_urls_are_part_of_the_key(tmp_path: Path) -> None:
    entries = context_entries(tmp_path, ["nope/*.txt", "https://example.org/x.tgz"])
    assert [(e.path, e.kind) for e in entries] == [("https://example.org/x.tgz", "u"),
                                                   ("nope/*.txt", "m")]


def test_globs_and_the_whole_context(tmp_path: Path) -> None:
    root = make_context(tmp_path)
    (root / "conf" / "b.conf").write_text("b\n")
    paths = [e.path for e in context_entries(root, ["conf/*.conf"])]
    assert paths == ["conf/a.conf", "conf/b.conf"]
    everything = [e.path for e in context_entries(root, ["."])]
    assert "unrelated.txt" in everything and "." in everything


# -- pinning -----------------------------------------------------------------------------------

def test_from_lines_are_pinned_to_digests() -> None:
    args = {"UPSTREAM_REGISTRY": "r.example/mirror", "REGISTRY": "r.example/g",
            "BASE_IMAGE_TAG": "p-7"}
    froms = parse_from_lines(CONTAINERFILE, args)
    digest = "sha256:" + "3" * 64
    pins = {"r.example/mirror/library/busybox:latest":
            f"r.example/mirror/library/busybox@{digest}",
            "r.example/g/base:p-7": f"r.example/g/base@{digest}"}
    text = pin_from_lines(CONTAINERFILE, froms, pins)
    lines = text.splitlines()
    assert lines[2] == f"FROM r.example/mirror/library/busybox@{digest} AS tools"
    assert lines[3] == f"FROM r.example/g/base@{digest}"
    assert lines[4:] == CONTAINERFILE.splitlines()[4:]
    assert strip_reference("h:5000/a/b:tag@sha256:x") == "h:5000/a/b"
    assert strip_reference("h:5000/a/b") == "h:5000/a/b"


# -- flags and tags ----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5", " "])
def test_jobs_must_be_a_positive_whole_number(value: str) -> None:
    with pytest.raises(InputError, match="is not a number of parallel builds") as err:
        parse_jobs(value, 4)
    assert err.value.exit_code == 2


def test_jobs_default_is_the_cpu_count() -> None:
    assert parse_jobs(None, 6) == 6 and parse_jobs(None, None) == 1 and parse_jobs("3", 1) == 3


def test_key_tag_is_owned_by_tag_policy_and_reserved() -> None:
    key = "sha256:" + "0123456789abcdef" * 4
    assert key_tag(key) == "k-0123456789abcdef0123456789abcdef"
    with pytest.raises(InputError):
        key_tag("md5:abc")
    with pytest.raises(InputError, match="collides with a tag kiln manages"):
        git_tag_as_image_tag(key_tag(key))


def test_source_date_epoch_is_declared_in_every_stage() -> None:
    text = "FROM a AS one\nRUN true\nFROM \\\n    b\nRUN x"
    assert declare_after_from(text, ("SOURCE_DATE_EPOCH",)) == (
        "FROM a AS one\nARG SOURCE_DATE_EPOCH\nRUN true\nFROM \\\n    b\n"
        "ARG SOURCE_DATE_EPOCH\nRUN x")


def test_graph_and_plan_are_pure() -> None:
    """kiln.build.graph and kiln.build.plan are the build's core part: no process, no HTTP, no
    console, no adapter (kiln.build as a whole is orchestration, so the import contract cannot
    say it; docs/architecture.md)."""
    import grimp

    graph = grimp.build_graph("kiln", include_external_packages=True, cache_dir=None)
    io = {"httpx", "rich", "subprocess", "kiln.proc", "kiln.console", "kiln.buildah",
          "kiln.skopeo", "kiln.registry.access", "kiln.registry.client", "kiln.gitops",
          "kiln.qemu", "kiln.local_registry", "kiln.build.run"}
    for module in ("kiln.build.graph", "kiln.build.plan"):
        assert graph.find_upstream_modules(module) & io == set(), module
