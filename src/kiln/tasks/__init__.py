"""kiln's invoke collection. A repository's ``tasks.py`` needs one line:

    from kiln.tasks import namespace  # noqa: F401

With it, ``invoke`` exits 2 on an unknown task or flag, as ``kiln`` does
(:mod:`kiln.tasks.program`).

Each concern has its own module of thin tasks over the library; this module only assembles them.
The modules are imported by name, not looked up at run time, so a module that fails to import
fails loudly instead of silently losing its tasks.
"""

from __future__ import annotations

from invoke.collection import Collection

from kiln.tasks import build, lifecycle, mirror, registry, run, seed
from kiln.tasks import graph as ci_graph_tasks
from kiln.tasks.program import adopt_running_invoke

TASK_MODULES = (build, registry, mirror, lifecycle, ci_graph_tasks, run, seed)

namespace = Collection()
for _module in TASK_MODULES:
    for _task in _module.TASKS:
        namespace.add_task(_task)

ns = namespace
adopt_running_invoke()
