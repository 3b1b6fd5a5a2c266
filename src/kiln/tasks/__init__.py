"""kiln's invoke collection. A repository's ``tasks.py`` needs one line:

    from kiln.tasks import namespace  # noqa: F401

Each concern has its own module of thin tasks over the library; this module only assembles them.
"""

from __future__ import annotations

import importlib

from invoke.collection import Collection

_TASK_MODULES = ("kiln.tasks.build", "kiln.tasks.registry", "kiln.tasks.mirror")

namespace = Collection()
for _name in _TASK_MODULES:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as _exc:  # a module not written yet; real import errors still raise
        if _exc.name != _name:
            raise
        continue
    for _task in getattr(_module, "TASKS", ()):
        namespace.add_task(_task)

ns = namespace
