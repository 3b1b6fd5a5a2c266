"""The image graph: which of our images is built FROM which (pure values, no I/O).

kiln used to work one image at a time; the graph lets ``invoke graph``, ``invoke build --all``
and the CI child-pipeline generator agree on one build order. A :class:`Node` is one image
(``builds/<image>.in``) with the images it is built FROM; :class:`ImageGraph` orders them
(dependencies first, ties by name), groups them into levels that can be built in parallel,
and cuts out the part a set of images needs. :mod:`kiln.build.plan` makes the graph from the
build files (file:line errors for cycles and missing build files); this module only checks
the shape it is given.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from kiln.errors import InputError


@dataclass(frozen=True)
class Node:
    """One image of the graph."""

    image: str
    arches: tuple[str, ...]      # architectures to build ((host arch,) when single-arch)
    deps: tuple[str, ...]        # our images it is built FROM (any stage), sorted
    file: str                    # builds/<image>.in
    key: str | None = None       # input key "sha256:<hex>" when computed
    reusable: bool = False       # the registry already has an image for this key
    changed: bool = True         # not reusable (or --rebuild): must be built

    def as_dict(self) -> dict[str, Any]:
        return {"image": self.image, "arches": list(self.arches), "deps": list(self.deps),
                "file": self.file, "key": self.key, "reusable": self.reusable,
                "changed": self.changed}


def find_cycle(deps: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A dependency cycle as a path ``[a, b, ..., a]`` (``a`` built FROM ``b`` ...), or None.
    Names that are not keys of ``deps`` are leaves."""
    graph = {name: sorted(set(d)) for name, d in deps.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    for start in sorted(graph):
        if state.get(start):
            continue
        path: list[str] = []
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            name, index = stack.pop()
            if index == 0:
                state[name] = 1
                path.append(name)
            children = graph.get(name, [])
            if index < len(children):
                stack.append((name, index + 1))
                child = children[index]
                if state.get(child) == 1:
                    return [*path[path.index(child):], child]
                if not state.get(child) and child in graph:
                    stack.append((child, 0))
                continue
            state[name] = 2
            path.pop()
    return None


@dataclass(frozen=True)
class ImageGraph:
    """Our images and what each is built FROM. Every dependency must be a node."""

    nodes: Mapping[str, Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        nodes = dict(sorted(self.nodes.items()))
        for name, node in nodes.items():
            if node.image != name:
                raise ValueError(f"node {node.image!r} filed under {name!r}")
            missing = [d for d in node.deps if d not in nodes]
            if missing:
                raise InputError(
                    f"{node.file}: {name} is built FROM {', '.join(missing)}, which the graph "
                    "does not contain",
                    hint="every image named in a FROM line needs its build file "
                         f"(builds/{missing[0]}.in)")
        cycle = find_cycle({name: node.deps for name, node in nodes.items()})
        if cycle:
            raise InputError(f"dependency cycle between images: {' -> '.join(cycle)}",
                             hint="an image cannot be built FROM itself through other images")
        object.__setattr__(self, "nodes", MappingProxyType(nodes))

    def __contains__(self, image: object) -> bool:
        return image in self.nodes

    def __len__(self) -> int:
        return len(self.nodes)

    def order(self) -> list[str]:
        """All images, each after everything it is built FROM; ties by name."""
        return [name for level in self.levels() for name in level]

    def levels(self) -> list[list[str]]:
        """Images grouped by depth: level 0 has no deps, level n needs only levels < n.
        The images of one level can be built in parallel."""
        depth: dict[str, int] = {}
        remaining = {name: set(node.deps) for name, node in self.nodes.items()}
        ready = [name for name, deps in remaining.items() if not deps]
        heapq.heapify(ready)
        dependents = self.direct_dependents()
        while ready:
            name = heapq.heappop(ready)
            depth[name] = max((depth[d] + 1 for d in self.nodes[name].deps), default=0)
            for child in sorted(dependents[name]):
                remaining[child].discard(name)
                if not remaining[child]:
                    heapq.heappush(ready, child)
        levels: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for name in sorted(depth):
            levels[depth[name]].append(name)
        return levels

    def edges(self) -> list[tuple[str, str]]:
        """``(image, dependency)`` pairs, sorted: ``image`` is built FROM ``dependency``."""
        return [(name, dep) for name, node in self.nodes.items() for dep in node.deps]

    def direct_dependents(self) -> dict[str, set[str]]:
        """For every image, the images built directly FROM it."""
        result: dict[str, set[str]] = {name: set() for name in self.nodes}
        for name, dep in self.edges():
            result[dep].add(name)
        return result

    def dependencies(self, image: str) -> set[str]:
        """Everything ``image`` needs, transitively (not ``image`` itself)."""
        self._known(image)
        seen: set[str] = set()
        todo = list(self.nodes[image].deps)
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(self.nodes[name].deps)
        return seen

    def dependents(self, image: str) -> set[str]:
        """Everything built FROM ``image``, transitively (not ``image`` itself): what a change
        of ``image`` can change."""
        self._known(image)
        direct = self.direct_dependents()
        seen: set[str] = set()
        todo = list(direct[image])
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(direct[name])
        return seen

    def affected(self, roots: Iterable[str]) -> ImageGraph:
        """The part of the graph ``roots`` need: the roots and everything they are built FROM."""
        keep: set[str] = set()
        for root in roots:
            keep |= {root, *self.dependencies(root)}
        return ImageGraph({name: self.nodes[name] for name in keep})

    def changed(self) -> list[str]:
        """The images that must be built, in build order."""
        return [name for name in self.order() if self.nodes[name].changed]

    def replace(self, node: Node) -> ImageGraph:
        """This graph with ``node`` in place of the node of the same image."""
        self._known(node.image)
        return ImageGraph({**self.nodes, node.image: node})

    def _known(self, image: str) -> None:
        if image not in self.nodes:
            raise InputError(f"unknown image {image!r}",
                             hint=f"images in the graph: {', '.join(self.nodes) or 'none'}")

    # -- renderings (pure text) -----------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        """``{"order", "levels", "nodes", "edges"}``: what ``invoke graph --json`` prints."""
        return {"order": self.order(), "levels": self.levels(),
                "nodes": [self.nodes[name].as_dict() for name in self.order()],
                "edges": [{"image": image, "from": dep} for image, dep in self.edges()]}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=False)

    def to_mermaid(self) -> str:
        """A Mermaid flowchart (GitLab renders it in Markdown): an arrow from each image to the
        images built FROM it; images that must be built are highlighted."""
        lines = ["flowchart TD"]
        ids = {name: f"n{index}" for index, name in enumerate(self.order())}
        for name in self.order():
            node = self.nodes[name]
            label = name + (f" [{', '.join(node.arches)}]" if len(node.arches) > 1 else "")
            state = "changed" if node.changed else "reused" if node.reusable else "unchanged"
            lines.append(f'  {ids[name]}["{label}<br/>{state}"]')
        for image, dep in self.edges():
            lines.append(f"  {ids[dep]} --> {ids[image]}")
        changed = [ids[name] for name in self.order() if self.nodes[name].changed]
        lines.append("  classDef changed fill:#fdd,stroke:#c00,stroke-width:2px")
        lines.append("  classDef reused fill:#dfd,stroke:#080")
        if changed:
            lines.append(f"  class {','.join(changed)} changed")
        reused = [ids[name] for name in self.order()
                  if not self.nodes[name].changed and self.nodes[name].reusable]
        if reused:
            lines.append(f"  class {','.join(reused)} reused")
        return "\n".join(lines)

    def to_table(self) -> str:
        """Build order as an indented table: each image under the level it belongs to, with
        what it is built FROM, its architectures, key and state."""
        rows = [("level", "image", "from", "arches", "key", "state")]
        for level, names in enumerate(self.levels()):
            for name in names:
                node = self.nodes[name]
                state = ("build" if node.changed else "reuse" if node.reusable else "keep")
                key = node.key.split(":", 1)[-1][:12] if node.key else "-"
                rows.append((str(level), "  " * level + name, ", ".join(node.deps) or "-",
                             ", ".join(node.arches), key, state))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
                         for row in rows)
