"""kiln's preprocessor against real GNU cpp on the corpus in ``tests/preprocess_corpus/``.

For every ``*.in`` file the test runs

    cpp -E -P -traditional -undef -nostdinc -iquote <corpus> -I <corpus>/includes [-D...] FILE

(buildah's flags plus ``-P -nostdinc``; the file is passed by path instead of on stdin so that
``__FILE__`` and the "directory of the including file" rule are the same for both) and
``kiln.preprocess.preprocess_file(FILE, [<corpus>, <corpus>/includes], defines)``, then compares
the two outputs after normalising only what the Dockerfile parser ignores:

* a backslash-newline is removed (the Dockerfile parser joins continued lines; kiln keeps the
  continuation, cpp joins the lines itself, and both remove exactly the backslash and newline);
* trailing whitespace of each line is removed, and blank lines are dropped (``cpp -P`` drops
  them, kiln keeps the source's blank lines).

Whitespace *inside* a line is compared exactly: it can matter (``echo "a  b"``, heredoc bodies).
``SOURCE_DATE_EPOCH`` is set so that ``__DATE__``/``__TIME__`` agree.

Each file's header comment gives its ``-D`` definitions and the warnings kiln must report (file,
line and a word of the message); see ``tests/preprocess_corpus/README.md``.

The comparison runs cpp, so it is in the ``tool`` tier. Without cpp it is skipped on a
workstation and fails in CI (``helpers.gnu_cpp.require_gnu_cpp``): it cannot vanish from a pipeline.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import gnu_cpp as gnu_cpp_helper
from helpers.gnu_cpp import gnu_cpp, require_gnu_cpp
from kiln.preprocess import preprocess_file

CORPUS = Path(__file__).resolve().parent / "preprocess_corpus"
INCLUDES = CORPUS / "includes"
EPOCH = "1700000000"
CORPUS_FILES = sorted(CORPUS.glob("*.in"))


@dataclass
class Header:
    defines: dict[str, str] = field(default_factory=dict)
    warnings: list[tuple[str, int, str]] = field(default_factory=list)  # (file, line, word)


_DEFINE_RE = re.compile(r"^\s*define:\s*([A-Za-z_]\w*)(?:=(.*))?$")
_WARN_RE = re.compile(r"^\s*warn:\s*(?:([^\s:]+):)?(\d+)\s+(\S.*)$")


def parse_header(path: Path) -> Header:
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    header = Header()
    match = re.match(r"/\* kiln-test\n(.*?)\*/", text, re.DOTALL)
    if match is None:
        return header
    for line in match.group(1).splitlines():
        if m := _DEFINE_RE.match(line):
            header.defines[m.group(1)] = "1" if m.group(2) is None else m.group(2).strip()
        elif m := _WARN_RE.match(line):
            header.warnings.append((m.group(1) or path.name, int(m.group(2)), m.group(3).strip()))
        elif line.strip():
            raise AssertionError(f"{path.name}: unknown kiln-test header line {line!r}")
    return header


def normalise(text: str) -> list[str]:
    """What the Dockerfile parser sees: continuations joined, no blank lines or trailing blanks."""
    joined = text.replace("\\\n", "")
    return [line.rstrip() for line in joined.split("\n") if line.strip()]


def run_cpp(path: Path, defines: dict[str, str]) -> str:
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH, "LC_ALL": "C"}
    result = gnu_cpp(path, CORPUS, [INCLUDES], defines, env)
    # cpp exits 1 for lines such as '# comment' (invalid directive) and still writes the output.
    assert "fatal error" not in result.stderr, result.stderr
    return result.stdout


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS_FILES) >= 30


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.name for p in CORPUS_FILES])
@pytest.mark.tool
def test_kiln_matches_cpp(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    header = parse_header(path)
    expected = run_cpp(path, header.defines)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    result = preprocess_file(path, [CORPUS, INCLUDES], header.defines)
    assert normalise(result.text) == normalise(expected)

    unmatched = [
        (Path(os.path.relpath(d.file, CORPUS)).as_posix(), d.line, d.message) for d in result.diagnostics
    ]
    for file, line, word in header.warnings:
        match = next((d for d in unmatched if d[:2] == (file, line) and word in d[2]), None)
        assert match is not None, f"no warning at {file}:{line} containing {word!r}: {unmatched}"
        unmatched.remove(match)
    assert unmatched == [], "unexpected warnings"

    assert result.included_files[0] == path
    if not header.warnings:
        assert preprocess_file(path, [CORPUS, INCLUDES], header.defines, strict=True) == result


def test_crlf_file_really_has_crlf() -> None:
    assert b"\r\n" in (CORPUS / "13_crlf.in").read_bytes()


def test_every_corpus_header_parses() -> None:
    for path in CORPUS_FILES:
        parse_header(path)


def test_missing_cpp_fails_in_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison cannot vanish from a pipeline: no cpp is a failure when CI is set."""
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cpp not installed"):
        require_gnu_cpp()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="cpp not installed"):
        require_gnu_cpp()


def test_a_cpp_that_is_not_gnu_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: "/usr/bin/cpp")
    monkeypatch.setattr(gnu_cpp_helper, "_probe", lambda cpp: f"{cpp} does not behave like GNU cpp")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not behave like GNU cpp"):
        require_gnu_cpp()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not behave like GNU cpp"):
        require_gnu_cpp()
