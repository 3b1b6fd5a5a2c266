"""The reference lint's idea of "ours": the mirror's destination hosts, tag sets included."""

from __future__ import annotations

from kiln.mirror.config import parse_config
from kiln.mirror.lint import check_uses, from_uses


def test_tag_set_destination_host_counts_as_approved() -> None:
    config = parse_config(
        "images:\n"
        "  - source: node\n"
        "    destination: cache.example.com/upstream/node\n"
        "    tags: {semver: '>=16 <17'}\n",
        "mirrors.yml", {"REGISTRY": "registry.example.com/group/project"})
    uses = from_uses("FROM cache.example.com/upstream/node:16.20.2\n", "builds/app.in")
    assert [str(f) for f in check_uses(uses, config)] == []
    # a host no entry writes to is still refused
    other = from_uses("FROM elsewhere.example.com/node:16\n", "builds/app.in")
    (finding,) = check_uses(other, config)
    assert "elsewhere.example.com, which is not an approved registry" in finding.message
