"""The one Containerfile reader: build, the reference lint and the credential check all use it.

Three hand-written readers used to disagree (a ``FROM`` inside a heredoc was an image for one and
text for another; a comment inside a ``\\`` continuation ended the instruction for one and became
part of it for another). This module reads a Containerfile the way Docker/BuildKit's parser does,
so every consumer sees the same instructions:

* **Parser directives**: ``# escape=\\`` or ``# escape=``` `` on the lines at the very top (before
  any blank line, comment or instruction) choose the continuation character; other directives
  (``# syntax=``, ``# check=``) are read and ignored.
* **Comments**: a line whose first non-blank character is ``#`` is dropped, also *inside* a
  continuation, where the continuation goes on (``RUN a \\`` / ``# note`` / ``b`` is ``RUN a b``).
* **Continuations**: a line ending in the escape character (trailing blanks allowed) continues
  on the next line; the parts are joined as written, without the escape character. Empty lines
  inside a continuation are skipped (Docker warns about them, BuildKit too). An escape at the end
  of the file ends the instruction.
* **Heredocs** (``RUN``, ``COPY`` and ``ADD`` only): every word ``<<NAME``, ``<<-NAME``,
  ``<<"NAME"``/``<<'NAME'`` (several per line) opens a heredoc; its body is the following lines
  up to a line that is exactly ``NAME`` (after removing leading tabs for ``<<-``). Bodies belong
  to their instruction (:attr:`Instruction.heredocs`), are never instructions themselves, and a
  quoted name means the body is not expanded. An unterminated heredoc runs to the end of the file.
* **Variables**: ``$VAR``, ``${VAR}``, ``${VAR:-word}``, ``${VAR-word}``, ``${VAR:+word}``,
  ``${VAR+word}``; ``\\$`` is a literal ``$``. A declared ``ARG`` without a value is unset.
* **FROM**: ``ARG`` instructions before the first ``FROM`` are the only variables a ``FROM`` sees
  (their defaults, or a build arg for a *declared* ARG, as ``--build-arg`` does);
  ``FROM [--platform=P] IMAGE [AS NAME]``; a ``FROM`` naming an earlier stage (case-insensitive)
  builds on that stage, not on an image.

Note that buildah 1.28 (Debian 12) predates heredoc support and reads body lines as instructions;
kiln reads them as Docker does, which is what a heredoc means in a Containerfile.

Pure: text in, instructions out. See docs/includes.md for how build files become Containerfiles.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from kiln.errors import InputError

HEREDOC_INSTRUCTIONS = frozenset({"RUN", "COPY", "ADD"})

_DIRECTIVE = re.compile(r"^#[ \t]*([A-Za-z][A-Za-z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*$")
_HEREDOC_WORD = re.compile(r"^(\d*)<<(-?)([^<]*)$")
_VAR = re.compile(
    r"\\\$|\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass(frozen=True)
class Heredoc:
    """The body of one ``<<NAME`` of an instruction."""

    name: str
    line: int  # line of the first body line (1-based)
    body: str  # the body lines, each ending in a newline, as Docker passes them on
    strip_tabs: bool = False  # <<-NAME
    expand: bool = True  # False for <<"NAME" / <<'NAME': variables stay as written


@dataclass(frozen=True)
class Instruction:
    """One instruction: continuations joined, comments dropped, heredoc bodies attached."""

    line: int  # first line (1-based)
    keyword: str  # upper-case: FROM, RUN ...
    arguments: str  # everything after the keyword, continuations joined
    text: str  # the instruction as written (keyword as written), continuations joined
    end_line: int  # last line, heredoc bodies included
    heredocs: tuple[Heredoc, ...] = ()

    def text_with_heredocs(self) -> str:
        """``text`` followed by the heredoc bodies (text that ends up in the image history)."""
        return "\n".join([self.text, *(h.body.rstrip("\n") for h in self.heredocs)])


def _escape_character(lines: list[str]) -> str:
    """The ``# escape=`` parser directive of the top lines, ``\\`` without one."""
    escape = "\\"
    for number, raw in enumerate(lines, start=1):
        match = _DIRECTIVE.match(raw.strip())
        if not match:
            break
        if match[1].lower() == "escape":
            if match[2] not in {"\\", "`"}:
                raise InputError(f"Containerfile line {number}: invalid escape directive "
                                 f"{match[2]!r}", hint="use '# escape=\\' or '# escape=`'")
            escape = match[2]
    return escape


def _is_comment(raw: str) -> bool:
    return raw.lstrip(" \t").startswith("#")


def _words_keeping_quotes(text: str) -> list[str]:
    """Whitespace-separated words, quotes kept and quoted blanks not splitting (as BuildKit's
    lexer with raw quotes)."""
    words: list[str] = []
    current: list[str] = []
    quote = ""
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quote != "'":
            current.append(char)
            escaped = True
        elif quote:
            current.append(char)
            if char == quote:
                quote = ""
        elif char in "\"'":
            current.append(char)
            quote = char
        elif char.isspace():
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words


def heredoc_markers(arguments: str) -> list[tuple[str, bool, bool]]:
    """(name, strip_tabs, expand) of every heredoc the arguments of a RUN/COPY/ADD open."""
    markers: list[tuple[str, bool, bool]] = []
    for word in _words_keeping_quotes(arguments):
        match = _HEREDOC_WORD.match(word)
        if not match or not match[3]:
            continue
        rest = match[3]
        try:
            unquoted = shlex.split(rest, posix=True)
        except ValueError:
            continue
        if len(unquoted) != 1:
            continue
        markers.append((unquoted[0], match[2] == "-", not any(q in rest for q in "\"'")))
    return markers


def instructions(text: str) -> list[Instruction]:
    """The instructions of a Containerfile, read by Docker's rules (see the module docstring)."""
    lines = text.splitlines()
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    escape = _escape_character(lines)
    continued = re.compile(re.escape(escape) + r"[ \t]*$")

    def trim(line: str) -> tuple[str, bool]:
        match = continued.search(line)
        return (line[:match.start()], False) if match else (line, True)

    result: list[Instruction] = []
    index = 0
    while index < len(lines):
        start = index + 1
        first = lines[index].lstrip(" \t")
        index += 1
        if first.startswith("#"):
            continue
        joined, ended = trim(first)
        if ended and not joined.strip():
            continue
        while not ended and index < len(lines):
            raw = lines[index]
            index += 1
            if _is_comment(raw) or not raw.strip():
                continue
            part, ended = trim(raw)
            joined += part
        written = joined.strip()
        if not written:
            continue
        keyword, arguments = _split_keyword(written)
        heredocs: list[Heredoc] = []
        if keyword.upper() in HEREDOC_INSTRUCTIONS and "<<" in arguments:
            for name, strip_tabs, expand in heredoc_markers(arguments):
                body_start = index + 1
                body: list[str] = []
                while index < len(lines):
                    raw = lines[index]
                    index += 1
                    candidate = raw.lstrip("\t") if strip_tabs else raw
                    if candidate == name:
                        break
                    body.append(raw + "\n")
                heredocs.append(Heredoc(name, body_start, "".join(body), strip_tabs, expand))
        result.append(Instruction(start, keyword.upper(), arguments, written, index,
                                  tuple(heredocs)))
    return result


def _split_keyword(written: str) -> tuple[str, str]:
    """``RUN   make all`` -> (``RUN``, ``make all``): Docker splits at the first blank run."""
    parts = re.split(r"\s+", written, maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""


def logical_lines(text: str, *, heredoc_bodies: bool = False) -> list[tuple[int, str]]:
    """(first line, instruction text) per instruction; with ``heredoc_bodies`` the bodies follow
    the text (one line each), for checks that look at everything that reaches the image."""
    return [(i.line, i.text_with_heredocs() if heredoc_bodies else i.text)
            for i in instructions(text)]


# -- variables ---------------------------------------------------------------------------------

def substitute(text: str, variables: Mapping[str, str], *, keep: Collection[str] = (),
               keep_unset: bool = False) -> str:
    """Dockerfile variable substitution: ``$X``, ``${X}``, ``${X:-word}``, ``${X-word}``,
    ``${X:+word}``, ``${X+word}``; ``\\$`` stays a literal ``$``.

    ``keep`` names variables left as written (the reference lint keeps ``${UPSTREAM_REGISTRY}``);
    with ``keep_unset`` an unset variable stays as written unless a ``-`` default applies
    (Docker replaces it by an empty string).
    """

    def replace(match: re.Match[str]) -> str:
        if match[0] == "\\$":
            return "$"
        name = match[1] or match[4]
        if name in keep:
            return match[0]
        value = variables.get(name)
        op, word = match[2], match[3] or ""
        if op == ":-":
            return value if value else word
        if op == "-":
            return word if value is None else value
        if value is None and keep_unset:
            return match[0]
        if op == ":+":
            return word if value else ""
        if op == "+":
            return "" if value is None else word
        return value or ""

    return _VAR.sub(replace, text)


def _words(arguments: str) -> list[str]:
    try:
        return shlex.split(arguments, posix=True)
    except ValueError:
        return arguments.split()


# -- FROM --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FromLine:
    """A FROM instruction: its line, text as written and image after the global ARGs."""

    line: int
    text: str
    image: str  # after substitution
    alias: str | None = None  # AS NAME
    written: str = ""  # the image as written
    platform: str | None = None  # --platform=..., as written
    stage: str | None = None  # the earlier stage (lower-case) this FROM builds on

    @property
    def is_image(self) -> bool:
        """Whether this FROM pulls an image (not ``scratch``, not an earlier stage)."""
        return self.stage is None and self.image.lower() != "scratch"


def parse_from_lines(text: str, build_args: Mapping[str, str], *, keep: Collection[str] = (),
                     keep_unset: bool = False) -> list[FromLine]:
    """FROM lines of a Containerfile with the global ``ARG``s (those before the first FROM)
    substituted: defaults, overridden by ``build_args`` for declared ARGs, as buildah does.
    ``keep``/``keep_unset`` as for :func:`substitute`."""
    variables: dict[str, str] = {}
    froms: list[FromLine] = []
    stages: set[str] = set()
    for instruction in instructions(text):
        if instruction.keyword == "ARG" and not froms:
            for item in _words(instruction.arguments):
                name, eq, default = item.partition("=")
                if name in build_args:
                    variables[name] = build_args[name]
                elif eq:
                    variables[name] = substitute(default, variables, keep=keep,
                                                 keep_unset=keep_unset)
                # a declared ARG without a value keeps what it had (unset if nothing)
        elif instruction.keyword == "FROM":
            words = instruction.arguments.split()
            flags = [w for w in words if w.startswith("--")]
            words = [w for w in words if not w.startswith("--")]
            if not words:
                continue
            platform = next((f.split("=", 1)[1] for f in flags
                             if f.startswith("--platform=")), None)
            alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            image = substitute(words[0], variables, keep=keep, keep_unset=keep_unset)
            stage = image.lower() if image.lower() in stages else None
            froms.append(FromLine(instruction.line, instruction.text, image, alias, words[0],
                                  platform, stage))
            if alias:
                stages.add(alias.lower())
    return froms


# -- where a step is ---------------------------------------------------------------------------

def locate_step(text: str, step: str) -> int | None:
    """Line (1-based) of the instruction buildah names in ``building at STEP "..."``."""
    wanted = " ".join(step.split())
    lines = [(i.line, " ".join(i.text.split())) for i in instructions(text)]
    for number, line in lines:
        if line == wanted:
            return number
    for number, line in lines:
        if wanted and wanted in line:
            return number
    return None
