"""kiln's working folder (``.kiln`` by default, the ``state-dir`` setting), created ignored.

kiln writes build contexts, the embedded registry's data and seed caches there. The folder
carries its own ``.gitignore`` (``*``), written when kiln creates it, so a repository that
adopts kiln never sees it in ``git status`` and needs no line in its own ``.gitignore``.
"""

from __future__ import annotations

from pathlib import Path

GITIGNORE_TEXT = "# kiln's working folder: nothing here belongs in git (written by kiln)\n*\n"


def ensure_state_dir(state_dir: Path) -> Path:
    """Create ``state_dir`` (and its parents) with its ``.gitignore``; return it. An existing
    ``.gitignore`` is left as the user made it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    ignore = state_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text(GITIGNORE_TEXT, encoding="utf-8")
    return state_dir


__all__ = ["GITIGNORE_TEXT", "ensure_state_dir"]
