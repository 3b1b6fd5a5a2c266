"""The build file the docs show a Python service writing (docs/includes.md, includes/README.md):
three includes and two comments, no ``#define``. Taken from the docs themselves, so the docs
and this test cannot drift apart.

Unit: what it becomes (FROM our python image, where pip install works; the setup.cfg-only
case handled). Real: built by kiln and run with ``invoke run`` for three applications, one with
only ``requirements.txt``, one with only ``setup.cfg``, one with only ``pyproject.toml``, each
with a top-level ``run.sh``. Offline: the dependency comes from a find-links page on
127.0.0.1 and pip builds without isolation, through the documented ``PIP_INSTALL_OPTIONS``
build argument (a setting of the build; the file itself stays as documented).

Before the fix, setup-from-base defaulted to base, whose system Python refuses pip install
(PEP 668, externally-managed-environment), and a project with only setup.cfg failed with
"Neither setup.py nor pyproject.toml found".
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO_ROOT, require_tool, skip_or_fail
from helpers.run import run_kiln
from kiln import build, preprocess, seed
from kiln.containerfile import logical_lines, parse_from_lines
from kiln.local_registry import RegistryServer
from kiln.preprocess import preprocess_text
from kiln.settings import Settings
from test_images_real import package_index, run_in, tiny_wheel  # noqa: F401  (fixture, helpers)
from test_run_image import workflow_settings
from test_seed import SEED_CACHE, unmount_storage

PACKAGE_INCLUDES = Path(preprocess.__file__).resolve().parent / "includes"
DRIVER = "overlay"


def documented_build_file(doc: Path) -> str:
    """The indented or fenced block of ``doc`` that includes setup-from-base and cleanup."""
    text = doc.read_text(encoding="utf-8")
    blocks = re.findall(r"```\n(.*?)```", text, flags=re.DOTALL)
    blocks += ["\n".join(line[4:] for line in block.splitlines()) + "\n" for block in
               re.findall(r"(?:^    \S.*\n)+", text, flags=re.MULTILINE)]
    for block in blocks:
        if block.lstrip().startswith('#include "setup-from-base"') and "cleanup" in block:
            return str(block)
    raise AssertionError(f"{doc} shows no build file of the three blocks")


def instructions(text: str) -> list[str]:
    return [" ".join(line.split()) for _, line in logical_lines(text)]


DOCS = [REPO_ROOT / "docs" / "includes.md", REPO_ROOT / "includes" / "README.md"]


# -- unit -------------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.parent.name + "/" + p.name)
def test_the_documented_file_is_three_includes_and_comments(doc: Path) -> None:
    source = documented_build_file(doc)
    directives = [line for line in source.splitlines() if line.startswith("#")]
    assert directives == ['#include "setup-from-base"', '#include "python-requirements"',
                          '#include "cleanup"']
    assert all(line.startswith(("#", "/*")) for line in source.splitlines() if line.strip())


def test_it_builds_on_the_python_image_where_pip_install_works() -> None:
    """setup-from-base's default is python (a venv first on PATH), not base (PEP 668)."""
    text = preprocess_text(documented_build_file(DOCS[0]), Path("app.in"), [PACKAGE_INCLUDES],
                           strict=True).text
    froms = parse_from_lines(text, {"REGISTRY": "reg.example/team", "BASE_IMAGE_TAG": "latest"})
    assert [f.image for f in froms] == ["reg.example/team/python:latest"]
    steps = instructions(text)
    assert "COPY ./run.sh ./requirements*.txt /code/" in steps
    assert "COPY . /code" in steps and 'ENTRYPOINT ["/code/run.sh"]' in steps
    assert "LABEL kiln.app-dir=." in steps
    install = next(s for s in steps if "setup.cfg" in s and "pip install" in s)
    # setup.cfg alone: a one-line setup.py is added to the copy pip builds from.
    assert "import setuptools; setuptools.setup()" in install
    assert '[ ! -f "$project/pyproject.toml" ] && [ ! -f "$project/setup.py" ]' in install


# -- real ---------------------------------------------------------------------------------------

APPS: dict[str, dict[str, str]] = {
    "reqapp": {
        "requirements.txt": "tinydep==1.0\n",
        "run.sh": '#!/bin/sh\nexec python3 -c "import tinydep; print(\'reqapp with\', '
                  'tinydep.VALUE)"\n',
    },
    "cfgapp": {
        "setup.cfg": "[metadata]\nname = cfgapp\nversion = 3.1\n\n[options]\n"
                     "py_modules = cfgapp\ninstall_requires = tinydep\n",
        "cfgapp.py": "import tinydep\n\ndef hello():\n"
                     "    return 'cfgapp 3.1 with ' + tinydep.VALUE\n",
        # Imported from / (not /code): only an installed cfgapp is found.
        "run.sh": '#!/bin/sh\ncd / && exec python3 -c "import cfgapp; print(cfgapp.hello())"\n',
    },
    "pyapp": {
        "pyproject.toml": '[build-system]\nrequires = ["setuptools>=61"]\n'
                          'build-backend = "setuptools.build_meta"\n\n[project]\n'
                          'name = "pyapp"\nversion = "0.4"\ndependencies = ["tinydep"]\n\n'
                          '[tool.setuptools]\npy-modules = ["pyapp"]\n',
        "pyapp.py": "import tinydep\n\ndef hello():\n    return 'pyapp 0.4 with ' + "
                    "tinydep.VALUE\n",
        "run.sh": '#!/bin/sh\ncd / && exec python3 -c "import pyapp; print(pyapp.hello())"\n',
    },
}


def write_app(root: Path, name: str, files: dict[str, str]) -> None:
    """A project of one application at its root: the documented build file and the app's
    files, nothing else (kiln's settings come from the test, not from a pyproject.toml that
    would change what pip sees)."""
    (root / "builds").mkdir(parents=True)
    (root / "builds" / f"{name}.in").write_text(documented_build_file(DOCS[0]))
    for filename, content in files.items():
        (root / filename).write_text(content)


@pytest.fixture(scope="module")
def python_image(shared_registry: RegistryServer, buildah_storage: dict[str, Path],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Our python image (and base) built by kiln into the session's registry under
    ``workflow/``, tag p-local (the same build as tests/test_run_image.py's, so the layer
    cache serves whichever comes second); the settings that point a project at it."""
    for tool, package in (("buildah", "buildah"), ("skopeo", "skopeo")):
        require_tool(tool, package)
    if os.geteuid() != 0 and not list(SEED_CACHE.glob("debian-bookworm-*/manifest.json")):
        skip_or_fail("the offline Debian image needs root once (debootstrap)")
    settings = workflow_settings(shared_registry, buildah_storage,
                                 tmp_path_factory.mktemp("state"))
    seed.seed_upstream(settings, shared_registry.address, names=["library/debian:bookworm"],
                       cache_dir=SEED_CACHE)
    build.build(settings, "python")
    yield {"registry": str(settings.registry), "upstream_registry": settings.upstream_registry,
           "storage_root": str(buildah_storage["root"]),
           "storage_runroot": str(buildah_storage["runroot"]), "storage_driver": DRIVER}
    unmount_storage(buildah_storage)


@pytest.mark.real
@pytest.mark.parametrize("name", list(APPS))
def test_documented_file_builds_and_runs(name: str, python_image: dict[str, str],
                                         package_index: str, tmp_path: Path) -> None:  # noqa: F811
    project = tmp_path / name
    options = f"--no-index --no-build-isolation --find-links {package_index}"
    write_app(project, name, APPS[name])
    settings = Settings.resolve(project, {}, {}, {
        **python_image, "state_dir": str(tmp_path / "state"), "base_image_tag": "p-local",
        "build_args": {"PIP_INSTALL_OPTIONS": options}})
    (result,) = build.build(settings, name)
    env = {"KILN_REGISTRY": python_image["registry"], "KILN_STATE_DIR": str(tmp_path / "state"),
           "KILN_STORAGE_ROOT": python_image["storage_root"],
           "KILN_STORAGE_RUNROOT": python_image["storage_runroot"], "STORAGE_DRIVER": DRIVER}
    done = run_kiln(project, "run", "--image", name, env=env)
    assert done.returncode == 0, done.stderr
    expected = {"reqapp": "reqapp with tinydep 1.0", "cfgapp": "cfgapp 3.1 with tinydep 1.0",
                "pyapp": "pyapp 0.4 with tinydep 1.0"}[name]
    assert done.stdout.strip() == expected
    # /code is exactly the application (built from a copy: no build/, no egg-info), the
    # project is installed in the python image's venv.
    storage = {"root": Path(python_image["storage_root"]),
               "runroot": Path(python_image["storage_runroot"])}
    listing = run_in(storage, result.ref, "sh", "-c", "ls -A /code; python3 -m pip list")
    files = sorted(set(APPS[name]) | {"builds"})
    assert listing.splitlines()[:len(files)] == files
    if name != "reqapp":
        assert re.search(rf"^{name}\s", listing, flags=re.MULTILINE)
