"""The C-preprocessor step: ``builds/<image>.in`` -> Containerfile text, with pcpp.

buildah preprocesses ``.in`` build files with ``cpp -E -iquote <context> -traditional -undef -``.
kiln must give the same Dockerfile meaning without calling cpp, so it runs pcpp (a C99
preprocessor written in Python) and bends it to GNU cpp's *traditional* mode. The reference used
by the tests is ``cpp -E -P -traditional -undef -nostdinc``.

What pcpp does not do, and therefore why the hand-written parts below exist
---------------------------------------------------------------------------
* **Lexing** (:class:`_TraditionalLexer`). pcpp's lexer is ISO C: it treats ``//`` as a comment
  (``https://x`` would lose ``//x``), it wants string and character literals to be closed, and it
  knows pp-numbers. Traditional cpp instead: ``//`` is plain text and macros after it *are*
  expanded (``// FOO`` -> ``// bar``, like cpp); a ``"`` or ``'`` literal ends at its closing
  quote *or at the end of the line*, so an apostrophe (``it's FOO``) stops macro expansion for
  the rest of that line, while an escaped ``\\"`` or ``\\'`` outside a literal opens no quote
  (``\\"FOO`` -> ``\\"bar``); ``/* */`` comments disappear entirely (``a/**/b`` -> ``ab``); an
  identifier may start right after digits (``1FOO`` -> ``1bar``). The lexer is lossless, so text
  that is not a directive, comment or macro comes out byte for byte (``$VAR``, ``${VAR}``,
  quotes, UTF-8). pcpp still does the directive handling, ``#if`` arithmetic, macro bookkeeping
  and expansion; its lexer is swapped after construction.
* **Trigraphs**: pcpp always replaces ``??=``, ``??/`` ...; cpp -traditional does not. kiln
  feeds pcpp's line grouper the raw text (``group_lines``), so trigraphs are never touched.
* **Directives only in column 0**: cpp -traditional recognises ``#`` only as the very first
  character of a line; ``  #define X`` or ``/* c */#define X`` are plain text (and reach the
  Containerfile, where an indented ``#`` line is a comment). pcpp accepts leading whitespace, so
  such lines get an invisible marker token (``KILN_BOL``) in front. kiln warns when such a line
  looks like a directive, because it is silently ignored.
* **Comments in directives** are spaces for cpp (``#/**/define A x``, ``# /* c */ include "f"``,
  ``#ifdef /* c */ X``, ``#define F(x /**/, y)``), except inside a ``#define``'s replacement
  text, where they vanish (``#define P a/**/b`` pastes ``ab``); pcpp would see a directive
  named ``/**/``. Such comments become a space token before pcpp reads the line.
* **Traditional macros** (:class:`_Expansion`, replacing pcpp's ``expand_macros``): no ``#``
  stringising and no ``##`` pasting; parameters are substituted inside string and character
  literals of the body too (``#define Q(x) "x"``), and inside ``"..."`` an argument's ``"`` is
  escaped as cpp does; arguments are collected unexpanded, keep their surrounding whitespace,
  and line ends inside them become spaces; the replacement is lexed again (``a/**/b`` may form
  a macro name) and scanned again together with the text after the invocation, so a
  function-like macro may invoke itself and take its arguments from what follows
  (``#define q(x) x(4)``: ``q(q)`` -> ``4(4)``). One quote state runs through it all, as in
  cpp: a replacement that leaves a quote open (``#define SHC sh -c "``) quotes the text after
  the invocation up to the next quote of that kind or the line end (macros there are not
  expanded, with a warning), and a quote open at a line end inside a macro's arguments goes on
  on the next line. No space is inserted after a function-like expansion followed by an
  identifier. ``__LINE__`` is the last line read (the ``)`` of a multi-line invocation).
* ``#elifdef``/``#elifndef`` (GCC 12 accepts them in traditional mode) are rewritten to
  ``#elif [!]defined``. ``#pragma`` (except ``once``), ``#ident``, ``#sccs`` pass through as cpp
  does. ``#error`` is an error, ``#warning`` a warning, ``#line`` is not supported (warning).
* **Includes** (``include``): own search with the rules below, cycle detection, hostile path
  refusal and ``included_files`` bookkeeping; pcpp's search silently walks ``os.path.join``.
* **Errors**: pcpp prints errors and carries on; kiln raises :class:`~kiln.errors.PreprocessError`
  with ``file:line:`` at the first error (messages also list the warnings seen so far, because a
  swallowing comment is often the cause of a later error).
* Builtins: ``__DATE__`` uses cpp's format (``"Nov  8 2026"``, day padded with a space), and
  both ``__DATE__``/``__TIME__`` honour ``SOURCE_DATE_EPOCH`` (UTC) like GCC; ``__PCPP__`` is
  removed; ``__INCLUDE_LEVEL__``, ``__BASE_FILE__``, ``__FILE_NAME__``, ``__TIMESTAMP__`` and
  ``__COUNTER__`` are provided like GCC provides them.

Include search (``#include "x"`` and ``#include <x>`` alike)
------------------------------------------------------------
For ``"x"`` the directory of the including file first (cpp does this), then ``include_path`` in
order: the build context, the repository's ``includes/``, the includes shipped with kiln
(:func:`default_include_path`). ``<x>`` searches ``include_path`` only. Refused as hostile: an
absolute name; a name whose ``..`` leaves every search directory; a file that resolves (through
symlinks) outside every search directory. A file that is entered again while it is still being
included is an include cycle (error with the chain) unless it starts with an include guard that
is already defined, or it said ``#pragma once``.

Output
------
Text with ``\\n`` line ends: CRLF and a lone CR are read as LF (as cpp does; the Dockerfile
meaning is the same), a UTF-8 BOM is dropped, the input must be UTF-8. Lines of directives,
dropped ``#`` lines and disabled ``#if`` branches disappear; blank lines of the source are kept
(they matter inside heredocs); trailing whitespace is removed; there are no ``#line`` markers.

Deliberate differences from cpp
-------------------------------
* **Backslash continuations are kept** as ``\\`` + newline (cpp joins them into one line). For
  Dockerfile instructions the meaning is the same (the Dockerfile parser joins them), and a
  ``# comment`` line inside a continued ``RUN`` keeps Dockerfile's meaning (the parser drops
  it) where cpp's joined line would let the shell treat the rest of the command as a comment:
  kiln warns about that case. Inside a ``COPY <<EOF`` heredoc body, a line ending in ``\\``
  keeps its backslash and newline (cpp would join the two lines of the file).
* Blank lines are kept as in the source (``cpp -P`` drops them; buildah, which runs without
  ``-P``, keeps them).
* ``__FILE__`` of the main file is its path (buildah pipes through stdin: ``"<stdin>"``).
* Errors stop preprocessing (cpp reports and continues; buildah then builds anyway).
* ``#include <x>`` searches ``include_path`` like ``"x"`` does (cpp would search only ``-I``
  directories, which buildah does not pass).
* Where cpp reports an error but still prints something, kiln may accept the input with its
  usual meaning: variadic macros work, ``F( )`` is accepted for a macro without parameters;
  an object-like macro that names itself (``#define PATH PATH:/x``) gives cpp's text without
  cpp's error.
* Refused (error with file:line and what to write instead) where kiln cannot follow cpp: a
  function-like macro invoking itself more than 20 levels deep (cpp reports an error too); a
  ``#`` line inside a macro's arguments, or after a function-like macro's name that ends a
  line (cpp reads that line as text while it collects the arguments or looks for the ``(``);
  a comment spanning lines inside a quote that a macro's expansion left open, or right after
  such a quote closes (a one-line ``/* */`` there is text, as for cpp); a quote in an ``#if``
  expression.
* ``#line``, ``#assert`` and ``#unassert`` are ignored with a warning; ``#include_next`` and
  ``#import`` are errors; ``__has_include(...)`` in ``#if`` is always 0.

Hazard heuristics (warnings; errors with ``strict=True``)
--------------------------------------------------------
1. ``/*`` that is probably a shell glob, not a comment. A comment is flagged when its ``/*`` is
   glued to the preceding text (``lists/*``, ``$DIR/*``), or is directly followed by a glob-ish
   character (``/*.log``, ``/*"``, ``/*;`` ...), or stands at the end of a line after other text
   (``rm -rf /*``), or starts after text on a line and swallows a later line that begins with a
   Dockerfile instruction (``RUN``, ``COPY`` ...) or a preprocessor directive. A comment that
   starts its own line (``/* commented out: RUN ... */``) or reads like prose after an
   instruction (``RUN make /* note */``) and the pasting idiom ``a/**/b`` are not flagged.
   A multi-line comment opened at the end of an instruction line (``RUN make /*`` + newline)
   is flagged although it may be intended. The warning names the line where the
   comment starts and ends and quotes what was swallowed. An unterminated comment is an error.
2. ``$NAME`` / ``${NAME}`` where NAME is a macro (``#define`` or ``-D``) and so gets replaced.
3. ``__FILE__``, ``__LINE__``, ``__DATE__``, ``__TIME__`` (and the other builtins above) get
   replaced; the warning says by what.
Also warned: ``#`` lines that are not directives (dropped, like cpp/buildah do), a macro name after
an unmatched quote or inside a quote a macro's expansion left open (not expanded), an indented
directive (ignored), a comment line inside a continued instruction, a macro redefined with a
different body, ``#warning``, ``#line``.
"""

from __future__ import annotations

import copy
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcpp import Preprocessor
from pcpp.parser import Action, OutputDirective

from kiln.errors import PreprocessError

__all__ = [
    "Diagnostic",
    "PreprocessResult",
    "default_include_path",
    "preprocess_file",
    "preprocess_text",
]


@dataclass(frozen=True)
class Diagnostic:
    """A warning (in strict mode: an error) with the place it refers to."""

    file: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True)
class PreprocessResult:
    """The Containerfile text plus what a caller needs to report and cache it.

    ``diagnostics`` are the warnings, ordered by file (main file first) and line.
    ``included_files`` is the main file (for :func:`preprocess_file`) and then every include in
    the order it was first read, each once, as found on the search path (directory + name).
    """

    text: str
    diagnostics: tuple[Diagnostic, ...]
    included_files: tuple[Path, ...]


def default_include_path(context_dir: Path, repo_includes: Path | None) -> tuple[Path, ...]:
    """The include search path: build context, repo ``includes/``, kiln's shipped includes."""
    candidates = [context_dir]
    if repo_includes is not None:
        candidates.append(repo_includes)
    candidates.append(Path(__file__).resolve().parent / "includes")
    result: list[Path] = []
    seen: set[str] = set()
    for directory in candidates:
        key = os.path.normcase(os.path.abspath(directory))
        if key not in seen:
            seen.add(key)
            result.append(directory)
    return tuple(result)


def preprocess_file(
    path: Path,
    include_path: Sequence[Path],
    defines: Mapping[str, str] | None = None,
    strict: bool = False,
) -> PreprocessResult:
    """Preprocess the build file at ``path`` (see the module docstring for the rules)."""
    path = Path(path)
    text = _read_source(path, None)
    return _run(text, path, include_path, defines, strict, main_was_read=True)


def preprocess_text(
    text: str,
    source_name: Path,
    include_path: Sequence[Path],
    defines: Mapping[str, str] | None = None,
    strict: bool = False,
) -> PreprocessResult:
    """Preprocess ``text`` as if it were read from ``source_name``.

    ``source_name`` names the text in messages and ``__FILE__``. If it has a directory part,
    that directory is searched first for ``#include "x"`` (as cpp does for the including file)
    and may hold includes; a bare name adds no directory.
    """
    return _run(_normalise_text(text), Path(source_name), include_path, defines, strict, False)


# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

_ID = "CPP_ID"
_WS = "CPP_WS"
_LINECONT = "CPP_LINECONT"
_STRING = "CPP_STRING"
_CHAR = "CPP_CHAR"
_COMMENT = "CPP_COMMENT1"
_POUND = "CPP_POUND"
_BOL = "KILN_BOL"  # zero-width: keeps pcpp from seeing a directive not in column 0
_BLANK = "KILN_BLANK"  # zero-width: marks a blank source line (kept in the output)
_GCC_SPACE = "KILN_GCC_SPACE"  # pcpp's ISO-only space after a function-like expansion
_MISSING = "KILN_MISSING"  # stands for the missing argument of '#ifdef' and friends

_INVISIBLE = frozenset({_WS, _LINECONT, _BOL, _BLANK, _COMMENT, _GCC_SPACE})

_DIRECTIVES = frozenset(
    {
        "define", "undef", "include", "include_next", "import", "if", "ifdef", "ifndef",
        "elif", "elifdef", "elifndef", "else", "endif", "error", "warning", "line", "pragma",
        "ident", "sccs", "assert", "unassert",
    }
)  # fmt: skip

_BUILTINS = frozenset(
    {
        "__FILE__", "__LINE__", "__DATE__", "__TIME__", "__TIMESTAMP__", "__COUNTER__",
        "__INCLUDE_LEVEL__", "__BASE_FILE__", "__FILE_NAME__",
    }
)  # fmt: skip

_INSTRUCTION_RE = re.compile(
    r"^\s*(?:FROM|RUN|CMD|LABEL|MAINTAINER|EXPOSE|ENV|ADD|COPY|ENTRYPOINT|VOLUME|USER|"
    r"WORKDIR|ARG|ONBUILD|STOPSIGNAL|HEALTHCHECK|SHELL)\s",
    re.IGNORECASE,
)
_DIRECTIVE_LINE_RE = re.compile(r"^#\s*(?:include|define|undef|if|ifdef|ifndef|elif|else|endif)\b")
_GLOB_AFTER = frozenset(".,;&|)]}'\"")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DEFINE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\([A-Za-z0-9_,. \t]*\))?$")
_GUARD_RE = re.compile(
    r"^#[ \t]*(?:ifndef[ \t]+([A-Za-z_]\w*)|if[ \t]*![ \t]*defined[ \t]*\(?[ \t]*([A-Za-z_]\w*))"
)
_MAX_INCLUDE_DEPTH = 200

_SPLICE = r"(?:\\[ \t]*\n)*"
_SPLICE_RE = re.compile(r"\\[ \t]*\n")


def _literal_body(quote: str) -> str:
    """What a literal holds: plain characters, continuations (cpp splices them first, also
    after a backslash: ``\\\\`` + newline is one backslash + a continuation) and escapes."""
    return rf"(?:[^{quote}\\\n]|\\[ \t]*\n|\\{_SPLICE}[^\n]|\\\Z)*"


_TOKEN_RE = re.compile(
    "|".join(
        [
            rf"(?P<{_COMMENT}>/{_SPLICE}\*.*?\*{_SPLICE}/)",
            rf"(?P<KILN_OPEN_COMMENT>/{_SPLICE}\*.*\Z)",
            rf"(?P<{_LINECONT}>\\[ \t]*\n)",
            rf"(?P<KILN_ESCAPE>\\{_SPLICE}(?:[\"']|\\(?![ \t]*\n)))",  # \" opens no quote (as in cpp)
            rf"(?P<{_WS}>[ \t\f\v]+|\n)",
            rf'(?P<{_STRING}>"{_literal_body(chr(34))}(?:"|(?=\n)|\Z))',
            rf"(?P<{_CHAR}>'{_literal_body(chr(39))}(?:'|(?=\n)|\Z))",
            rf"(?P<{_ID}>[A-Za-z_](?:{_SPLICE}[A-Za-z0-9_])*)",  # cpp splices before it lexes
            r"(?P<CPP_INTEGER>(?:0[xX][0-9a-fA-F]+|[0-9]+)"
            r"(?:[uU](?:ll|LL|[lL])?|(?:ll|LL|[lL])[uU]?)?(?![A-Za-z0-9_])|[0-9]+)",
            r"(?P<KILN_OP>&&|\|\||==|!=|<=|>=|<<|>>)",
            r"(?P<KILN_OTHER>[^\x00-\x7f]+)",
            r"(?P<KILN_CHAR>.)",
        ]
    ),
    re.DOTALL,
)
# continuation | escaped \\ " ' (cpp skips those, also across a continuation) | one character
_QUOTE_SCAN_RE = re.compile(rf"\\[ \t]*\n|\\{_SPLICE}[\\\"']|.", re.DOTALL)
_CLOSED_LITERAL_RE = re.compile(f"\"{_literal_body(chr(34))}\"|'{_literal_body(chr(39))}'")
_OPS = {
    "&&": "CPP_LOGICALAND", "||": "CPP_LOGICALOR", "==": "CPP_EQUALITY", "!=": "CPP_INEQUALITY",
    "<=": "CPP_LESSEQUAL", ">=": "CPP_GREATEREQUAL", "<<": "CPP_LSHIFT", ">>": "CPP_RSHIFT",
}  # fmt: skip
_SINGLE = {
    "+": "CPP_PLUS", "-": "CPP_MINUS", "*": "CPP_STAR", "/": "CPP_FSLASH", "%": "CPP_PERCENT",
    "|": "CPP_BAR", "&": "CPP_AMPERSAND", "~": "CPP_TILDE", "^": "CPP_HAT", "<": "CPP_LESS",
    ">": "CPP_GREATER", "=": "CPP_EQUAL", "!": "CPP_EXCLAMATION", "?": "CPP_QUESTION",
    "(": "CPP_LPAREN", ")": "CPP_RPAREN", "[": "CPP_LBRACKET", "]": "CPP_RBRACKET",
    "{": "CPP_LCURLY", "}": "CPP_RCURLY", ".": "CPP_DOT", ",": "CPP_COMMA",
    ";": "CPP_SEMICOLON", ":": "CPP_COLON", "\\": "CPP_BSLASH", "#": _POUND,
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _normalise_text(text: str) -> str:
    """Drop a BOM, read CRLF and a lone CR as LF (as cpp does). Trailing blanks of a line stay:
    inside a quote that macro arguments carry over a line end, cpp keeps them."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_source(path: Path, where: tuple[str, int] | None) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        prefix = f"{where[0]}:{where[1]}: cannot read the include " if where else "cannot read "
        raise PreprocessError(f"{prefix}{path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PreprocessError(
            f"{path}:{line}: not valid UTF-8 (byte {exc.start}); build files must be UTF-8"
        ) from exc
    return _normalise_text(text)


# --------------------------------------------------------------------------------------------
# Lexer
# --------------------------------------------------------------------------------------------


class _Token:
    """A token in the shape pcpp expects (it copies tokens and adds attributes to them)."""

    def __init__(self, type_: str, value: str, lineno: int, lexpos: int) -> None:
        self.type = type_
        self.value = value
        self.lineno = lineno
        self.lexpos = lexpos
        self.source = ""
        # comments: the text before and after them on their lines, and where they end;
        # comments and literals: whether the closing delimiter is missing
        self.prefix = ""
        self.suffix = ""
        self.end_lineno = lineno
        self.unterminated = False

    def __repr__(self) -> str:
        return f"Token({self.type}, {self.value!r}, {self.lineno})"


class _TraditionalLexer:
    """A lexer with GNU cpp -traditional rules and pcpp's token type names (see module doc)."""

    def __init__(self) -> None:
        self.lineno = 1
        self._tokens: Iterator[_Token] = iter(())

    def clone(self) -> _TraditionalLexer:
        return _TraditionalLexer()

    def input(self, text: str) -> None:
        self._tokens = self._lex(text)

    def token(self) -> _Token | None:
        return next(self._tokens, None)

    def _lex(self, text: str) -> Iterator[_Token]:
        lineno = self.lineno
        for match in _TOKEN_RE.finditer(text):
            kind = match.lastgroup or "KILN_CHAR"
            value = match.group()
            start = match.start()
            if kind == "KILN_OP":
                kind = _OPS[value]
            elif kind == "KILN_CHAR":
                kind = _SINGLE.get(value, value)
            tok = _Token(kind, value, lineno, start)
            if kind in (_COMMENT, "KILN_OPEN_COMMENT"):
                line_start = text.rfind("\n", 0, start) + 1
                line_end = text.find("\n", match.end())
                tok.prefix = text[line_start:start]
                tok.suffix = text[match.end() : len(text) if line_end < 0 else line_end]
                tok.unterminated = kind != _COMMENT
                tok.end_lineno = lineno + value.count("\n")
                tok.type = _COMMENT
            elif kind in (_STRING, _CHAR):
                tok.unterminated = _CLOSED_LITERAL_RE.fullmatch(value) is None
            elif kind == _ID and "\n" in value:  # a name split by a continuation is one name
                tok.value = _SPLICE_RE.sub("", value)
            lineno += value.count("\n")
            yield tok
        self.lineno = lineno


# --------------------------------------------------------------------------------------------
# The preprocessor
# --------------------------------------------------------------------------------------------


def _text(tokens: Iterable[Any]) -> str:
    return "".join(str(t.value) for t in tokens)


def _shorten(text: str, limit: int = 160) -> str:
    text = text.replace("\n", "\\n")
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _source_date() -> time.struct_time:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        return time.gmtime(int(epoch))
    return time.localtime()


@dataclass
class _Frame:
    """A file being preprocessed: its display name, resolved path and where it was included."""

    display: str
    resolved: str | None
    text: str
    include_line: int = 0  # line of the #include in this file that is being processed


class _KilnPreprocessor(Preprocessor):  # type: ignore[misc]
    def __init__(self, include_path: Sequence[Path], main: Path, main_was_read: bool) -> None:
        self._diagnostics: list[Diagnostic] = []
        self._seen_diagnostics: set[tuple[str, int, str]] = set()
        self._included: list[Path] = []
        self._frames: list[_Frame] = []
        self._file_order: list[str] = []
        self._raw_text = ""
        self._scan_hazards = True
        self._lex_cache: dict[str, list[_Token]] = {}  # replacement text -> its tokens
        self._main = main
        super().__init__()
        self.lexer = _TraditionalLexer()
        self.line_directive = None
        self.auto_pragma_once_enabled = False
        self.rewrite_paths: list[tuple[str, str]] = []  # keep file names as we give them
        self.t_SPACE = _GCC_SPACE  # pcpp's own inserted spaces: render drops them
        self.include_dirs = [Path(p) for p in include_path]
        roots = [str(p) for p in self.include_dirs]
        # The main file's directory is searched first for "x" (cpp does) and may hold includes;
        # for text without a real directory (preprocess_text("...", Path("x.in"))) it is not.
        main_dir = os.path.dirname(str(main))
        self._search_main_dir = bool(main_dir) or main_was_read
        if self._search_main_dir:
            roots.append(main_dir or os.curdir)
        self._roots_lexical = [os.path.normpath(os.path.abspath(r)) for r in roots]
        self._roots_real = [os.path.realpath(r) for r in roots]
        self.undef("__PCPP__")
        when = _source_date()
        month, clock = time.strftime("%b", when), time.strftime("%H:%M:%S", when)
        self.define(f'__DATE__ "{month} {when.tm_mday:2d} {when.tm_year}"')  # cpp: "Nov  8 2026"
        self.define(f'__TIME__ "{clock}"')
        self.define(f"__BASE_FILE__ {self._quote(str(main))}")

    # ---- diagnostics --------------------------------------------------------------------

    @staticmethod
    def _quote(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def warn(self, source: str, line: int, message: str) -> None:
        key = (source, line, message)
        if key not in self._seen_diagnostics:
            self._seen_diagnostics.add(key)
            self._diagnostics.append(Diagnostic(Path(source or "<command-line>"), line, message))

    def error(self, source: str, line: int, message: str) -> PreprocessError:
        text = f"{source or '<command-line>'}:{line}: {message}"
        if self._diagnostics:
            earlier = "\n".join(f"  {d}" for d in self._diagnostics)
            text += f"\nwarnings before this error (one may be the cause):\n{earlier}"
        return PreprocessError(text)

    def _source_line(self, source: str, line: int) -> str:
        for frame in reversed(self._frames):
            if frame.display == source:
                lines = frame.text.split("\n")
                return lines[line - 1] if 0 < line <= len(lines) else ""
        return ""

    def _comment_hint(self) -> str:
        source, line = self._where()
        return _COMMENT_HINT if _PROSE_DIRECTIVE_RE.match(self._source_line(source, line)) else ""

    def _where(self) -> tuple[str, int]:
        tok = self.lastdirective
        if tok is not None:
            return str(tok.source), int(tok.lineno)
        return (self._frames[-1].display if self._frames else str(self._main)), 0

    # ---- pcpp hooks ----------------------------------------------------------------------

    def on_error(self, file: Any, line: Any, msg: str) -> None:
        if not file or file == "unknown" or not line:
            file, line = self._where()
        text = str(msg).strip()
        if text.startswith("Unterminated "):
            text = f"unterminated {text[len('Unterminated ') :].strip()} (no #endif in this file)"
        elif text.startswith("Misplaced #"):
            text = f"{text[len('Misplaced ') :]} without #if"
        elif text.startswith("Could not evaluate expression"):
            match = _EVAL_ERROR_RE.search(text)
            expr, why = (match.group(2), match.group(1)) if match else ("?", text)
            if _PYTHON_EXCEPTION_RE.match(why):  # pcpp's evaluator failed: no Python text in messages
                why = "it is not a valid C integer expression"
            text = f"cannot evaluate #if/#elif expression {expr!r}: {why}" + self._comment_hint()
        elif text == "Bad macro definition":
            text = (
                "malformed #define: a macro name is ASCII letters, digits and '_', and a "
                "function-like macro has '(' right after its name"
            )
        raise self.error(str(file), int(line), text)

    def on_comment(self, tok: Any) -> bool:
        prefix: str = getattr(tok, "prefix", "")
        suffix: str = getattr(tok, "suffix", "")
        value = str(tok.value)
        source, line = str(tok.source), int(tok.lineno)
        if getattr(tok, "unterminated", False):
            raise self.error(
                source,
                line,
                f"unterminated comment: '/*' in {_shorten((prefix + value).splitlines()[0])!r} "
                "is never closed (cpp would swallow the rest of the file)" + _GLOB_HINT,
            )
        body = value[2:-2]
        stripped_prefix = prefix.strip()
        reason = ""
        if value == "/**/":
            pass  # the traditional token-pasting idiom a/**/b
        elif prefix and not prefix[-1].isspace():
            reason = f"'/*' is glued to {stripped_prefix.split()[-1]!r}"
        elif body[:1] in _GLOB_AFTER:
            reason = f"'/*' is followed by {body[:1]!r}"
        elif stripped_prefix and (body.split("\n", 1)[0].strip() == "" and "\n" in body):
            reason = "'/*' ends a line of text"
        elif stripped_prefix and "\n" in value:
            swallowed = value.split("\n")[1:]
            if any(_INSTRUCTION_RE.match(s) or _DIRECTIVE_LINE_RE.match(s) for s in swallowed):
                reason = "the comment swallows Dockerfile instructions or directives"
        if reason:
            end = int(getattr(tok, "end_lineno", line))
            span = f"line {line}" if end == line else f"lines {line}-{end}"
            excerpt = _shorten((prefix + value.split("\n")[0]).strip(), 80)
            kept = f"; the text after it stays: {_shorten(suffix, 60)!r}" if suffix.strip() else ""
            self.warn(
                source,
                line,
                f"'/*' in {excerpt!r} opens a C comment ({reason}): cpp removes everything up to "
                f"the next '*/' ({span}): {_shorten(value)!r}{kept}{_GLOB_HINT}",
            )
        tok.comment_text = value
        if getattr(tok, "directive_space", False):
            tok.type, tok.value = _WS, " "  # in a directive (not a replacement text): a space
        else:
            tok.value = ""  # cpp -traditional removes comments completely (a/**/b -> ab)
        return True

    def on_directive_handle(self, directive: Any, toks: Any, ifpassthru: Any, precedingtoks: Any) -> Any:
        self.lastdirective = directive
        if directive.value == "pragma":
            if toks and toks[0].value == "once":
                return True
            raise OutputDirective(Action.IgnoreAndPassThrough)  # cpp passes #pragma through
        if directive.value in ("if", "ifdef", "ifndef", "elif") and not toks:
            # pcpp would index toks[0]; the marker makes an *evaluated* directive report it
            toks.append(self._marker(_MISSING, directive))
        if directive.value == "if":
            # pcpp's include-guard probe reads up to toks[3] ('#if !defined(X'); pad with nothing
            toks.extend(self._marker(_WS, directive) for _ in range(3))
        if directive.value == "include" and self._frames:
            self._frames[-1].include_line = int(directive.lineno)
        return True

    def on_directive_unknown(self, directive: Any, toks: Any, ifpassthru: Any, precedingtoks: Any) -> Any:
        name = str(directive.value)
        source, line = str(directive.source), int(directive.lineno)
        rest = _text(toks).strip()
        if name == "error":
            raise self.error(source, line, f"#error {rest}".rstrip() + self._comment_hint())
        if name == "warning":
            self.warn(source, line, f"#warning {rest}".rstrip())
            return True
        if name in ("ident", "sccs"):
            return None  # cpp passes these through
        if name in ("include_next", "import"):
            raise self.error(source, line, f"#{name} is not supported; use #include")
        if name in ("line", "assert", "unassert"):
            self.warn(source, line, f"#{name} is not supported by kiln; line ignored")
            return True
        full = self._source_line(source, line).strip() or f"#{name} {rest}".strip()
        self.warn(
            source,
            line,
            f"{_shorten(full, 80)!r} is not a preprocessor directive: the line is dropped (as cpp "
            "and buildah do); indent it to keep it as a Dockerfile comment",
        )
        return True

    def on_unknown_macro_in_defined_expr(self, tok: Any) -> Any:
        if tok.type != _ID:
            source, line = self._where()
            found = "nothing" if tok.type == _MISSING else repr(tok.value)
            name = self.lastdirective.value if self.lastdirective is not None else "ifdef"
            raise self.error(source, line, f"#{name}: macro name expected, found {found}")
        return False

    # ---- macros ---------------------------------------------------------------------------

    def define(self, tokens: Any) -> None:
        from_directive = not isinstance(tokens, str)
        if isinstance(tokens, str):
            tokens = self.tokenize(tokens)
        tokens = [copy.copy(t) for t in tokens]
        for tok in tokens:  # cpp splices a continued #define into one line: drop '\\' + newline
            if tok.type == _LINECONT:
                tok.type, tok.value = _WS, ""
        if not tokens or tokens[0].type != _ID:
            source, line = self._where()
            found = repr(tokens[0].value) if tokens else "nothing"
            raise self.error(source, line, f"#define: macro name expected, found {found}")
        name = str(tokens[0].value)
        old = self.macros.get(name)
        super().define(tokens)
        new = self.macros.get(name)
        if from_directive and old is not None and new is not None and name not in _BUILTINS:
            if _macro_signature(old) != _macro_signature(new):
                where = f"{old.source}:{old.lineno}" if old.source else "-D"
                self.warn(
                    str(tokens[0].source), int(tokens[0].lineno),
                    f"macro {name} redefined (previous definition: {where})",
                )  # fmt: skip

    def undef(self, tokens: Any) -> None:
        if isinstance(tokens, str):
            tokens = self.tokenize(tokens)
        if not tokens or tokens[0].type != _ID:
            source, line = self._where()
            raise self.error(source, line, "#undef: macro name expected")
        self.macros.pop(tokens[0].value, None)

    def collect_args(self, tokenlist: Any, ignore_errors: bool = False) -> Any:
        """The parameter list of a function-like ``#define`` (pcpp calls this from ``define``).

        Arguments of an invocation are collected by :class:`_Expansion`, cpp -traditional style.
        """
        args: list[list[Any]] = []
        positions: list[int] = []
        current: list[Any] = []
        nesting = 1
        i = 0
        while i < len(tokenlist) and tokenlist[i].type in self.t_WS:
            i += 1
        if i >= len(tokenlist) or tokenlist[i].value != "(":
            self.on_error(tokenlist[0].source, tokenlist[0].lineno, "missing '(' in macro parameters")
            return 0, [], []
        positions.append(i + 1)
        i += 1
        while i < len(tokenlist):
            tok = tokenlist[i]
            if tok.value == "(":
                nesting += 1
            elif tok.value == ")":
                nesting -= 1
                if nesting == 0:
                    args.append(current)
                    positions.append(i)
                    return i + 1, [self.tokenstrip(a) for a in args], positions
            elif tok.value == "," and nesting == 1:
                args.append(current)
                positions.append(i + 1)
                current = []
                i += 1
                continue
            current.append(tok)
            i += 1
        first = tokenlist[0]
        message = "unterminated argument list of a macro parameter list (no ')')"
        self.on_error(first.source, first.lineno, message)
        return 0, [], []

    def macro_prescan(self, macro: Any) -> None:
        macro.patch, macro.str_patch, macro.var_comma_patch = [], [], []

    def expand_macros(self, tokens: Any, expanding_from: Any = None) -> Any:
        """Expand macros in ``tokens`` the way cpp -traditional does (see :class:`_Expansion`)."""
        result = _Expansion(self, hazards=self._scan_hazards).run(list(tokens))
        if not self._scan_hazards:  # an #if/#elif expression
            self._check_expression_literals(result)
        return result

    def evalexpr(self, tokens: Any) -> Any:
        if all(t.type in (_MISSING, _WS, _COMMENT) for t in tokens):
            source, line = self._where()
            name = self.lastdirective.value if self.lastdirective is not None else "if"
            raise self.error(source, line, f"#{name} with no expression")
        words = [t for t in tokens if t.type not in (_WS, _COMMENT)]
        for n, tok in enumerate(words):
            if tok.type == _ID and tok.value == "defined":
                rest = [t.type if t.type == _ID else t.value for t in words[n + 1 : n + 4]]
                if rest[:1] != [_ID] and rest != ["(", _ID, ")"]:
                    source, line = self._where()
                    raise self.error(source, line, "'defined' needs a macro name: defined(NAME)")
        self._scan_hazards = False
        try:
            return super().evalexpr(tokens)
        finally:
            self._scan_hazards = True

    def _check_expression_literals(self, tokens: Sequence[Any]) -> None:
        """cpp refuses quotes in #if; pcpp would fail with a Python exception text instead."""
        for tok in tokens:
            if tok.type not in (_STRING, _CHAR):
                continue
            value = str(tok.value)
            source, line = self._where()
            name = self.lastdirective.value if self.lastdirective is not None else "if"
            if getattr(tok, "unterminated", False):
                what = "character" if value[0] == "'" else "string"
                raise self.error(
                    source, line,
                    f"#{name}: unterminated {what} literal {_shorten(value, 40)!r} (missing closing "
                    f"{value[0]}); an #if expression is C arithmetic: compare numbers, e.g. "
                    "'#if VERSION >= 3'",
                )  # fmt: skip
            if tok.type == _STRING or value == "''":
                why = "an empty character constant" if value == "''" else "a string"
                raise self.error(
                    source, line,
                    f"#{name}: {value} is {why}, which is not valid in an #if expression; "
                    "compare numbers, e.g. '#if VERSION >= 3'",
                )  # fmt: skip

    def _warn_builtin(self, source: str, line: int, name: str, via: list[str], value: str = "") -> None:
        if name == "__LINE__":
            value = value or str(line)
        elif name == "__COUNTER__":
            value = "a counter (0, 1, ...)"
        else:
            value = _text(self.macros[name].value)
        note = (
            "; the output changes with every build"
            if name in ("__DATE__", "__TIME__", "__TIMESTAMP__")
            else ""
        )
        if via:
            note += f" (in the expansion of {via[-1]})"
        self.warn(source, line, f"{name} is replaced by cpp with {value}{note}")

    # ---- lines and files ------------------------------------------------------------------

    def parsegen(self, input: Any, source: Any = None, abssource: Any = None) -> Iterator[Any]:
        # pcpp replaces trigraphs before calling group_lines; we hand group_lines the raw text.
        self._raw_text = str(input)
        yield from super().parsegen(input, source, abssource)

    def group_lines(self, input: Any, abssource: Any) -> list[list[Any]]:
        text = self._raw_text
        lexer = self.lexer.clone()
        lexer.input(text)
        lines: list[list[Any]] = []
        current: list[Any] = []
        while True:
            tok = lexer.token()
            if tok is None:
                break
            tok.source = abssource
            current.append(tok)
            if tok.type == _WS and tok.value == "\n":
                lines.append(current)
                current = []
        if current:
            newline = _Token(_WS, "\n", current[-1].lineno + str(current[-1].value).count("\n"), 0)
            newline.source = abssource
            current.append(newline)
            lines.append(current)
        return [self._fix_line(line) for line in lines]

    def _fix_line(self, line: list[Any]) -> list[Any]:
        first = line[0]
        if len(line) == 1:  # just the newline: a blank source line
            return [self._marker(_BLANK, first), first]
        if first.type != _POUND:
            for tok in line:
                if tok.type in (_WS, _COMMENT, _LINECONT):
                    continue
                if tok.type == _POUND:  # '#' not in column 0: not a directive for cpp -traditional
                    return [self._marker(_BOL, first), *line]
                break
            return line
        _mark_directive_comments(line)
        # '#elifdef X' / '#elifndef X' -> '#elif [!]defined X'
        i = 1
        while i < len(line) and line[i].type in (_WS, _COMMENT):
            i += 1
        if i < len(line) and line[i].type == _ID and line[i].value in ("elifdef", "elifndef"):
            negate = line[i].value == "elifndef"
            parts = [("elif", _ID), (" ", _WS)] + ([("!", "CPP_EXCLAMATION")] if negate else [])
            parts += [("defined", _ID), (" ", _WS)]
            new = []
            for value, kind in parts:
                tok = copy.copy(line[i])
                tok.type, tok.value = kind, value
                new.append(tok)
            line = line[:i] + new + line[i + 1 :]
        return line

    @staticmethod
    def _marker(kind: str, near: Any) -> Any:
        tok = copy.copy(near)
        tok.type, tok.value = kind, ""
        return tok

    def include(self, tokens: Any, original_line: Any) -> Iterator[Any]:
        source, line = self._where()
        tokens = self.tokenstrip(list(tokens))
        name, system = self._include_name(tokens, source, line)
        found = self._find_include(name, system, source, line)
        display, resolved = found
        if any(os.path.realpath(k) == resolved for k in self.include_once):
            return  # #pragma once
        self._check_cycle(display, resolved, source, line)
        text = _read_source(Path(display), (source, line))
        path = Path(display)
        if path not in self._included:
            self._included.append(path)
        self._push(_Frame(display, resolved, text))
        saved = {k: self.macros.get(k) for k in ("__FILE_NAME__", "__INCLUDE_LEVEL__", "__TIMESTAMP__")}
        self._define_file_macros(display)
        try:
            yield from self.parsegen(text, name, display)
        finally:
            self._frames.pop()
            for key, macro in saved.items():
                if macro is None:
                    self.macros.pop(key, None)
                else:
                    self.macros[key] = macro

    def _push(self, frame: _Frame) -> None:
        self._frames.append(frame)
        if frame.display not in self._file_order:
            self._file_order.append(frame.display)

    def _define_file_macros(self, display: str) -> None:
        self.define(f"__FILE_NAME__ {self._quote(os.path.basename(display))}")
        self.define(f"__INCLUDE_LEVEL__ {len(self._frames) - 1}")
        try:
            when = time.localtime(os.stat(display).st_mtime)
            stamp = time.strftime(f"%a %b {when.tm_mday:2d} %H:%M:%S %Y", when)
        except OSError:
            stamp = "??? ??? ?? ??:??:?? ????"
        self.define(f'__TIMESTAMP__ "{stamp}"')

    def _include_name(self, tokens: list[Any], source: str, line: int) -> tuple[str, bool]:
        if not tokens:
            raise self.error(source, line, '#include expects "FILE" or <FILE>, found nothing')
        first = tokens[0]
        if first.type == _STRING and len(str(first.value)) >= 2 and str(first.value).endswith('"'):
            name, system = str(first.value)[1:-1], False
        elif first.value == "<":
            close = next((i for i, t in enumerate(tokens) if t.value == ">"), None)
            if close is None:
                raise self.error(source, line, f"#include: missing '>' in {_text(tokens)!r}")
            name, system = _text(tokens[1:close]), True
        else:
            raise self.error(
                source, line,
                f'#include expects "FILE" or <FILE>, found {_text(tokens)!r}' + self._comment_hint(),
            )  # fmt: skip
        if not name.strip():
            raise self.error(source, line, "#include with an empty file name")
        return name, system

    def _find_include(self, name: str, system: bool, source: str, line: int) -> tuple[str, str]:
        spelled = f"<{name}>" if system else f'"{name}"'
        searched = ", ".join(str(d) for d in self.include_dirs) or "(empty search path)"
        if os.path.isabs(name) or name.startswith("~"):
            raise self.error(
                source, line,
                f"refusing #include {spelled}: absolute paths are not allowed; includes are "
                f"looked up in the search path: {searched}",
            )  # fmt: skip
        dirs: list[tuple[str, str]] = []
        if not system and self._frames and (len(self._frames) > 1 or self._search_main_dir):
            here = os.path.dirname(self._frames[-1].display)
            dirs.append((here, f"{here or '.'} (directory of {self._frames[-1].display})"))
        dirs += [(str(d), str(d)) for d in self.include_dirs]
        for directory, _label in dirs:
            candidate = os.path.join(directory, name)
            lexical = os.path.normpath(os.path.abspath(candidate))
            if ".." in Path(name).parts and not any(_is_within(lexical, r) for r in self._roots_lexical):
                raise self.error(
                    source, line,
                    f"refusing #include {spelled}: it leaves the include search path "
                    f"({lexical} is outside {searched})",
                )  # fmt: skip
            if not os.path.isfile(candidate):
                continue
            real = os.path.realpath(candidate)
            if not any(_is_within(real, r) for r in self._roots_real):
                raise self.error(
                    source, line,
                    f"refusing #include {spelled}: {candidate} resolves to {real}, outside the "
                    f"include search path ({searched})",
                )  # fmt: skip
            return candidate, real
        tried = "\n".join(f"  {label}" for _d, label in dirs) or "  (no directories)"
        raise self.error(source, line, f"#include {spelled}: file not found; searched:\n{tried}")

    def _check_cycle(self, display: str, resolved: str, source: str, line: int) -> None:
        if len(self._frames) >= _MAX_INCLUDE_DEPTH:
            raise self.error(source, line, f"#include nested more than {_MAX_INCLUDE_DEPTH} levels")
        active = [f for f in self._frames if f.resolved == resolved]
        if not active:
            return
        if len(active) == 1:
            guard = _include_guard(active[0].text)
            if guard is not None and guard in self.macros:
                return  # guarded: the nested copy produces nothing, as with cpp
        start = next(i for i, f in enumerate(self._frames) if f is active[0])
        chain = " -> ".join(f"{f.display}:{f.include_line}" for f in self._frames[start:])
        raise self.error(source, line, f"include cycle: {chain} -> {display}")

    # ---- output ---------------------------------------------------------------------------

    def render(self, tokens: Iterable[Any]) -> str:
        lines: list[str] = []
        current: list[Any] = []
        for tok in tokens:
            if tok.type == _GCC_SPACE:
                continue
            if tok.type == _WS and tok.value == "\n":
                self._render_line(current, lines)
                current = []
            else:
                current.append(tok)
        if current:
            self._render_line(current, lines)
        while lines and not lines[0]:
            lines.pop(0)
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines) + "\n" if lines else ""

    def _render_line(self, toks: list[Any], out: list[str]) -> None:
        visible = [t for t in toks if t.type not in _INVISIBLE and str(t.value).strip()]
        if not visible:
            if any(t.type == _BLANK for t in toks):
                out.append("")
            return
        self._check_line_hazards(toks, visible)
        text = _text(toks)
        out.append("\n".join(part.rstrip(" \t") for part in text.split("\n")))

    def _check_line_hazards(self, toks: list[Any], visible: list[Any]) -> None:
        first = visible[0]
        if first.type == _POUND and toks[0] is not first:
            idx = toks.index(first)
            word = next((t for t in toks[idx + 1 :] if t.type not in _INVISIBLE), None)
            if word is not None and word.type == _ID and word.value in _DIRECTIVES:
                self.warn(
                    str(first.source), int(first.lineno),
                    f"'#{word.value}' is not in column 0, so cpp -traditional does not treat it as "
                    "a directive: the line is passed through as text",
                )  # fmt: skip
        for i, tok in enumerate(toks):
            if tok.type != _LINECONT:
                continue
            j = i + 1
            while j < len(toks) and toks[j].type == _WS:
                j += 1
            if j < len(toks) and toks[j].type == _POUND:
                self.warn(
                    str(toks[j].source), int(toks[j].lineno),
                    "'#' line inside a continued instruction: cpp (and buildah) join it into the "
                    "instruction, where the shell treats the rest as a comment; kiln keeps the "
                    "line break, so the Dockerfile parser drops the comment line instead",
                )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Macro expansion, cpp -traditional style
# --------------------------------------------------------------------------------------------

_RECURSION_LIMIT = 20  # cpp -traditional lets a function-like macro re-enter itself this deep
_NO_TEXT = frozenset({_LINECONT, _BOL, _BLANK, _GCC_SPACE, _MISSING})


@dataclass
class _Context:
    """Text being scanned: the tokens handed in (``macro`` None) or a macro's replacement."""

    tokens: list[Any]
    macro: str | None
    pos: int = 0


class _Expansion:
    """Expands macros in one token list the way GNU cpp -traditional does.

    cpp -traditional scans text, not ISO tokens, and pcpp's expander differs from it in ways
    that change a Containerfile without any message. What this class does like cpp:

    * A replacement is pushed as a new context and scanned again together with the text after
      it: a function-like macro's name at the end of a replacement takes its arguments from the
      text that follows the invocation (``#define q(x) x(4)``: ``q(q)`` is ``4(4)``).
    * One quote state runs through everything: a replacement that leaves a quote open
      (``#define SHC sh -c "``) quotes the text after the invocation up to the next quote of the
      same kind (or the line end), so macro names there are not expanded. A ``/*`` inside such a
      quote is text for cpp; kiln has already removed it, so that case is refused.
    * Arguments are collected unexpanded (they are expanded when the replacement is scanned
      again), across line ends (which become spaces), and a quote open at a line end inside
      the arguments goes on on the next line.
    * A parameter inside ``"..."`` of the replacement gets its argument's ``"`` escaped
      (``\\"``), like cpp; replacement text is lexed again after substitution, so ``a/**/b``
      pastes into one name that can be a macro.
    * A function-like macro may invoke itself; cpp gives up with an error past 20 nested
      levels, kiln refuses that (error). An object-like macro met inside its own expansion
      stays as it is (cpp prints it unexpanded too).
    """

    def __init__(self, pp: _KilnPreprocessor, hazards: bool) -> None:
        self.pp = pp
        self.hazards = hazards
        self.stack: list[_Context] = []
        self.quote = ""  # the open quote character; "" when none is open
        self.quote_origin: str | None = None  # the macro whose replacement opened it
        self.quote_line = 0
        self.dollar_refs: dict[tuple[str, int, str], list[str]] = {}
        self.not_expanded: set[tuple[str, int, str]] = set()

    def run(self, tokens: list[Any]) -> list[Any]:
        self.stack = [_Context(tokens, None)]
        out: list[Any] = []
        while (ctx := self._current()) is not None:
            if self.quote:
                self._quoted(ctx, out, collecting=False)
                continue
            tok = ctx.tokens[ctx.pos]
            ctx.pos += 1
            if tok.type == _ID:
                self._identifier(tok, ctx, out)
                continue
            if tok.type in (_STRING, _CHAR) and getattr(tok, "unterminated", False):
                self._open_quote(tok, ctx)
                self._warn_unmatched(tok, ctx)
            out.append(tok)
        self._flush_dollar_refs()
        return out

    # ---- scanning ------------------------------------------------------------------------

    def _current(self) -> _Context | None:
        """The context with text left, leaving finished macro replacements (as cpp pops them)."""
        while True:
            ctx = self.stack[-1]
            if ctx.pos < len(ctx.tokens):
                return ctx
            if len(self.stack) == 1:
                return None
            self.stack.pop()

    def _line_read(self) -> int:
        """The line cpp has read up to (its ``__LINE__``): that of the last text token taken
        from the tokens handed in, e.g. the ')' that ends a multi-line invocation."""
        base = self.stack[0]
        for tok in reversed(base.tokens[: base.pos]):
            if tok.type not in _NO_TEXT:
                return int(tok.lineno)
        return int(base.tokens[0].lineno) if base.tokens else 0

    def _via(self) -> list[str]:
        return [c.macro for c in self.stack if c.macro is not None]

    def _open_quote(self, tok: Any, ctx: _Context) -> None:
        self.quote = str(tok.value)[0]
        self.quote_origin = ctx.macro
        self.quote_line = int(tok.lineno)

    def _quoted(self, ctx: _Context, dest: list[Any], collecting: bool) -> None:
        """Take the next piece of text inside the open quote, up to its closing quote."""
        tok = ctx.tokens[ctx.pos]
        if tok.type == _WS and tok.value == "\n":
            if not collecting:
                self.quote = ""  # the quote ends with its line
                return
            space = copy.copy(tok)
            space.value = " "  # inside macro arguments: a space, and the quote goes on
            dest.append(space)
            ctx.pos += 1
            return
        if tok.type in _NO_TEXT:
            dest.append(tok)
            ctx.pos += 1
            return
        value = str(tok.value)
        if tok.type == _COMMENT:  # inside a quote '/*' is text for cpp
            value = getattr(tok, "comment_text", "")
            if "\n" in value or not value:
                raise self.pp.error(
                    str(tok.source), int(tok.lineno),
                    f"the comment '{_shorten(value or '/*', 40)}' follows a {self.quote} that "
                    f"{self._opener()} leaves open: cpp reads it as quoted text up to the line "
                    "end and the lines after it as text; kiln cannot follow that: close the "
                    "quote before the comment or keep the comment on one line",
                )  # fmt: skip
            tok = copy.copy(tok)
            tok.type, tok.value = "KILN_TEXT", value
        end = _closing_quote(value, self.quote)
        piece = tok
        if end < 0:
            ctx.pos += 1
        else:
            piece = copy.copy(tok)
            piece.value = value[: end + 1]
            # The rest of the line was lexed as if the quote were closed: lex it again from here.
            stop = ctx.pos + 1
            while stop < len(ctx.tokens) and not _ends_relexing(ctx.tokens[stop]):
                stop += 1
            rest = value[end + 1 :] + "".join(str(t.value) for t in ctx.tokens[ctx.pos + 1 : stop])
            ctx.tokens[ctx.pos : stop] = self._lex(rest, tok, after_quote=True)
        if not collecting:
            self._warn_quoted(piece)
        if end >= 0:
            self.quote = ""
        dest.append(piece)

    def _opener(self) -> str:
        if self.quote_origin is not None:
            return f"the expansion of {self.quote_origin}"
        return f"line {self.quote_line}"

    def _identifier(self, tok: Any, ctx: _Context, out: list[Any]) -> None:
        pp = self.pp
        name = str(tok.value)
        source, line = str(tok.source), int(tok.lineno)
        if name in ("__LINE__", "__COUNTER__") and name not in pp.macros:
            if name == "__LINE__" and pp.expand_linemacro:
                value = str(self._line_read())
            elif name == "__COUNTER__" and pp.expand_countermacro:
                value = str(pp.countermacro)
                pp.countermacro += 1
            else:
                out.append(tok)
                return
            if self.hazards:
                pp._warn_builtin(source, line, name, self._via(), value)
            number = copy.copy(tok)
            number.type, number.value = pp.t_INTEGER, value
            out.append(number)
            return
        macro = pp.macros.get(name)
        if macro is None:
            out.append(tok)
            return
        if macro.arglist is None:
            if any(c.macro == name for c in self.stack):
                out.append(tok)  # cpp: "detected recursion"; the name stays as it is
                return
            self._check_hazards(tok, macro, out)
            self._push(name, "".join(str(t.value) for t in macro.value), tok)
            return
        if not self._at_open_paren(tok):
            out.append(tok)  # a function-like macro's name without arguments is plain text
            return
        depth = len(self.stack)
        if any(c.macro == name and depth - i > _RECURSION_LIMIT for i, c in enumerate(self.stack)):
            raise pp.error(
                source, line,
                f"macro {name} invokes itself more than {_RECURSION_LIMIT} levels deep: cpp "
                f"stops there with an error (detected recursion whilst expanding macro "
                f"\"{name}\"); rewrite {name} so that its expansion does not invoke it again",
            )  # fmt: skip
        self._check_hazards(tok, macro, out)
        args = self._collect_args(tok)
        self._push(name, self._substitute(macro, self._match_params(tok, macro, args)), tok)

    def _at_open_paren(self, name_tok: Any) -> bool:
        """Whether the next text (in this or an enclosing context) is '(': then stand on it."""
        level = len(self.stack) - 1
        pos = self.stack[level].pos
        while True:
            tokens = self.stack[level].tokens
            while pos < len(tokens) and tokens[pos].type in _INVISIBLE:
                if level == 0 and tokens[pos].type == _WS and tokens[pos].value == "\n":
                    self._check_line_after(name_tok, tokens[pos])
                pos += 1
            if pos < len(tokens):
                if tokens[pos].value != "(":
                    return False
                del self.stack[level + 1 :]  # finished replacements: cpp has left them
                self.stack[level].pos = pos
                return True
            if level == 0:
                return False
            level -= 1
            pos = self.stack[level].pos

    def _check_line_after(self, name_tok: Any, newline: Any, in_arguments: bool = False) -> None:
        """cpp looks for a function-like macro's '(' and its arguments on the next lines too,
        and reads a directive line there as text; kiln has executed or dropped it: refuse."""
        source, line = str(newline.source), int(newline.lineno)
        following = self.pp._source_line(source, line + 1)
        if not following.startswith("#"):
            return
        name = str(name_tok.value)
        if in_arguments:
            raise self.pp.error(
                source, line + 1,
                f"{_shorten(following, 60)!r} is inside the arguments of {name} (invoked on "
                f"line {name_tok.lineno}): cpp reads it as text, not as a directive; close the "
                f"invocation with ')' before the directive (e.g. one invocation per branch)",
            )  # fmt: skip
        raise self.pp.error(
            str(name_tok.source), int(name_tok.lineno),
            f"{name} is a function-like macro, and no '(' follows it on its line: cpp then "
            f"reads on for the '(' and takes the next line ({source}:{line + 1}: "
            f"{_shorten(following, 60)!r}) as text, not as a directive; write {name}(...) "
            f"to invoke it, or do not end the line with {name}",
        )  # fmt: skip

    def _collect_args(self, name_tok: Any) -> list[list[Any]]:
        """The raw arguments after the '(' the scan stands on, up to the matching ')'."""
        self.stack[-1].pos += 1
        args: list[list[Any]] = [[]]
        nesting = 1
        while True:
            ctx = self._current()
            if ctx is None:
                hint = ""
                if self.quote:
                    hint = (
                        f"; a {self.quote} opened on line {self.quote_line} is never closed, and "
                        "cpp reads ',' and ')' inside quotes as text"
                    )
                raise self.pp.error(
                    str(name_tok.source), int(name_tok.lineno),
                    f"unterminated argument list of a macro invocation (no ')'){hint}",
                )  # fmt: skip
            tok = ctx.tokens[ctx.pos]
            if ctx is self.stack[0] and tok.type == _WS and tok.value == "\n":
                self._check_line_after(name_tok, tok, in_arguments=True)
            if self.quote:
                self._quoted(ctx, args[-1], collecting=True)
                continue
            ctx.pos += 1
            if tok.type == _WS and tok.value == "\n":
                tok = copy.copy(tok)
                tok.value = " "  # cpp -traditional: a line end inside arguments is a space
            elif tok.type in (_STRING, _CHAR) and getattr(tok, "unterminated", False):
                self._open_quote(tok, ctx)
            elif tok.value == "(":
                nesting += 1
            elif tok.value == ")":
                nesting -= 1
                if nesting == 0:
                    return args
            elif tok.value == "," and nesting == 1:
                args.append([])
                continue
            args[-1].append(tok)

    def _match_params(self, tok: Any, macro: Any, args: list[list[Any]]) -> list[list[Any]]:
        """Check the argument count as pcpp does (same messages), and fill in variadics."""
        blank = len(args) == 1 and all(t.type in _INVISIBLE for t in args[0])
        params = len(macro.arglist)
        name = str(tok.value)
        if params == 0 and blank:
            args = []  # F() and F( ) for a macro without parameters
        if not macro.variadic and len(args) != params:
            self.pp.on_error(
                tok.source, tok.lineno, f"Macro {name} requires {params} arguments but was passed {len(args)}"
            )
        if macro.variadic:
            if len(args) < params - 1:
                plural = "s" if params > 2 else ""
                message = f"Macro {name} must have at least {params - 1} argument{plural}"
                self.pp.on_error(tok.source, tok.lineno, message)
            if len(args) == params - 1:
                args.append([])
            else:
                rest: list[Any] = []
                for n, arg in enumerate(args[params - 1 :]):
                    if n:
                        comma = copy.copy(tok)
                        comma.type, comma.value = "CPP_COMMA", ","
                        rest.append(comma)
                    rest.extend(arg)
                args = [*args[: params - 1], rest]
        while len(args) < params:
            args.append([])
        return args

    @staticmethod
    def _substitute(macro: Any, args: list[list[Any]]) -> str:
        """The replacement text with the arguments in place of the parameters (also in quotes)."""
        index = {str(name): n for n, name in enumerate(macro.arglist)}
        parts: list[str] = []
        in_quotes = False  # inside "..." of the replacement text: cpp escapes the argument's "

        def argument(n: int, in_literal: bool) -> str:
            raw = "".join("" if in_literal and t.type == _LINECONT else str(t.value) for t in args[n])
            return _escape_in_quotes(raw) if in_quotes else raw

        def plain(text: str) -> None:
            nonlocal in_quotes
            parts.append(text)
            in_quotes ^= text.count('"') % 2 == 1

        for tok in macro.value:
            value = str(tok.value)
            if tok.type == _ID and value in index:
                parts.append(argument(index[value], False))
            elif tok.type in (_STRING, _CHAR):
                start = 0
                for match in _IDENT_RE.finditer(value):
                    if match.group() in index:
                        plain(value[start : match.start()])
                        parts.append(argument(index[match.group()], True))
                        start = match.end()
                plain(value[start:])
            else:
                plain(value)
        return "".join(parts)

    def _push(self, name: str, text: str, at: Any) -> None:
        self.stack.append(_Context(self._lex(text, at), name))

    def _lex(self, text: str, at: Any, after_quote: bool = False) -> list[Any]:
        """``text`` as tokens at ``at``'s place: a replacement's tokens all stand at the
        invocation (for messages); the rest of a line after a quote keeps its own lines."""
        cache = self.pp._lex_cache
        template = cache.get(text)
        if template is None:
            lexer = _TraditionalLexer()
            lexer.input(text)
            template = []
            while (tok := lexer.token()) is not None:
                template.append(tok)
            if len(cache) < 4096:
                cache[text] = template
        tokens = []
        for proto in template:
            tok = copy.copy(proto)
            tok.source = at.source
            tok.lineno = int(at.lineno) + (int(proto.lineno) - 1 if after_quote else 0)
            if tok.type == _COMMENT:
                if after_quote and tok.unterminated:
                    raise self.pp.error(
                        str(at.source), int(at.lineno),
                        f"'/*' after the {self.quote} that closes the quote {self._opener()} "
                        "leaves open starts a comment that ends on a later line: kiln cannot "
                        "follow cpp there; end the comment on the same line or drop it",
                    )  # fmt: skip
                self.pp.on_comment(tok)
            tokens.append(tok)
        return tokens

    # ---- diagnostics ---------------------------------------------------------------------

    def _warn_unmatched(self, tok: Any, ctx: _Context) -> None:
        value = str(tok.value)
        if ctx.macro is None:
            why = f"it follows an unmatched {value[0]} and cpp reads the rest of the line as a quoted literal"
        else:
            why = (
                f"the expansion of {ctx.macro} opens a {value[0]} it does not close, so cpp reads "
                f"the text up to the next {value[0]} (or the line end) as a quoted literal"
            )
        self._warn_not_expanded(tok, _IDENT_RE.findall(value), why)

    def _warn_quoted(self, piece: Any) -> None:
        value = str(piece.value)
        words = [value] if piece.type == _ID else _IDENT_RE.findall(value)
        why = (
            f"{self._opener()} leaves a {self.quote} open, so cpp reads the text after it up to "
            f"the next {self.quote} (or the line end) as a quoted literal"
        )
        self._warn_not_expanded(piece, words, why)

    def _warn_not_expanded(self, tok: Any, words: list[str], why: str) -> None:
        """One warning per line and macro name that a quote keeps from being expanded."""
        if not self.hazards:
            return
        source, line = str(tok.source), int(tok.lineno)
        for name in words:
            key = (source, line, name)
            if name in self.pp.macros and key not in self.not_expanded:
                self.not_expanded.add(key)
                self.pp.warn(source, line, f"macro {name} is not expanded: {why}")
                return

    def _check_hazards(self, tok: Any, macro: Any, out: list[Any]) -> None:
        """Warn about a builtin or a ``$NAME``/``${NAME}`` that is about to be replaced."""
        if not self.hazards:
            return
        name = str(tok.value)
        source, line = str(tok.source), int(tok.lineno)
        via = self._via()
        if name in _BUILTINS:
            self.pp._warn_builtin(source, line, name, via)
            return
        dollar = bool(out) and out[-1].value == "$"
        brace = len(out) > 1 and out[-1].value == "{" and out[-2].value == "$"
        if not (dollar or brace):
            return
        lead = "$" if dollar else "${"
        if macro.arglist is None:
            ctx = self.stack[-1]
            following = ctx.tokens[ctx.pos].value if ctx.pos < len(ctx.tokens) else ""
            close = "}" if brace and following == "}" else ""
            what = f"{lead + name + close!r} becomes {lead + _text(macro.value) + close!r}"
        else:
            what = f"{lead + name!r} and its argument list are replaced"
        if via:
            what += f" (in the expansion of {via[-1]})"
        forms = self.dollar_refs.setdefault((source, line, name), [])
        if what not in forms:
            forms.append(what)

    def _flush_dollar_refs(self) -> None:
        for (source, line, name), forms in self.dollar_refs.items():
            macro = self.pp.macros.get(name)
            if macro is None:
                continue
            where = f"#define at {macro.source}:{macro.lineno}" if macro.source else "-D"
            self.pp.warn(
                source, line,
                f"{name} is a macro ({where}), so cpp replaces the shell/Dockerfile variable: "
                f"{', '.join(forms)}; rename the macro or the variable",
            )  # fmt: skip


def _ends_relexing(tok: Any) -> bool:
    """A line end, or a comment (its text is gone: the quote state at it is checked instead)."""
    return bool(tok.type == _COMMENT or (tok.type == _WS and tok.value == "\n"))


def _closing_quote(text: str, quote: str) -> int:
    """Index of the ``quote`` character that closes an open quote in ``text``, or -1."""
    for match in _QUOTE_SCAN_RE.finditer(text):
        if match.group() == quote:
            return match.start()
    return -1


def _escape_in_quotes(argument: str) -> str:
    """An argument substituted inside "..." of a replacement, escaped the way cpp does it."""
    out: list[str] = []
    in_argument_quotes = False
    for i, char in enumerate(argument):
        if char == '"':
            if i > 0 and argument[i - 1] != "\\":
                in_argument_quotes = not in_argument_quotes
            out.append("\\")
        elif in_argument_quotes and char == "\\":
            out.append("\\")
        out.append(char)
    return "".join(out)


_EVAL_ERROR_RE = re.compile(r"due to (.*) \(passed to evaluator: '(.*)'\)$", re.DOTALL)
_PYTHON_EXCEPTION_RE = re.compile(r"^[A-Za-z]*(?:Error|Exception)\(")
_GLOB_HINT = ". If this is a shell glob, keep '/' and '*' apart, e.g. write 'lists/?*' instead of 'lists/*'"
_COMMENT_HINT = (
    " (if this line is meant as a Dockerfile comment: a '#' line that starts with a directive "
    "name is read as that directive; indent the comment to keep it, or reword it)"
)
_PROSE_DIRECTIVE_RE = re.compile(r"^#[ \t]+[A-Za-z_]+[ \t]+\S")


def _mark_directive_comments(line: list[Any]) -> None:
    """Mark the comments that cpp reads as a space: all of a directive line's, except those in
    a ``#define``'s replacement text (there they vanish, which pastes ``a/**/b``)."""
    words = [i for i, t in enumerate(line) if t.type not in (_WS, _COMMENT, _LINECONT)]
    end = len(line)
    if len(words) > 2 and line[words[1]].value == "define" and line[words[2]].type == _ID:
        j = words[2] + 1
        if j < len(line) and line[j].value == "(":  # a parameter list: up to its ')'
            while j < len(line) and line[j].value != ")":
                j += 1
            j += 1
        while j < len(line) and line[j].type in (_WS, _COMMENT, _LINECONT):
            j += 1  # the blanks before the replacement text
        end = j
    for tok in line[:end]:
        if tok.type == _COMMENT:
            tok.directive_space = True


def _macro_signature(macro: Any) -> tuple[Any, str]:
    return macro.arglist, " ".join(_text(macro.value).split())


def _include_guard(text: str) -> str | None:
    """The macro of an ``#ifndef X`` guard opening ``text`` (after blank lines and comments)."""
    stripped = re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL).lstrip()
    match = _GUARD_RE.match(stripped)
    if match is None:
        return None
    return match.group(1) or match.group(2)


def _run(
    text: str,
    main: Path,
    include_path: Sequence[Path],
    defines: Mapping[str, str] | None,
    strict: bool,
    main_was_read: bool,
) -> PreprocessResult:
    pp = _KilnPreprocessor(include_path, main, main_was_read)
    for name, value in (defines or {}).items():
        if not _DEFINE_NAME_RE.match(name) or "\n" in str(value):
            raise PreprocessError(f"<command-line>:0: invalid definition -D {name}={value!r}")
        pp.define(f"{name} {value}")
    display = str(main)
    if main_was_read:
        pp._included.append(main)
    resolved = os.path.realpath(display) if main_was_read else None
    pp._push(_Frame(display, resolved, text))
    pp._define_file_macros(display)
    try:
        output = pp.render(pp.parsegen(text, display, display))
    except IndexError as exc:  # pcpp indexes directive arguments without checking them
        source, line = pp._where()
        raise pp.error(source, line, "malformed directive: an argument it needs is missing") from exc
    order = {f: n for n, f in enumerate(pp._file_order)}
    diagnostics = tuple(sorted(pp._diagnostics, key=lambda d: (order.get(str(d.file), len(order)), d.line)))
    if strict and diagnostics:
        listing = "\n".join(f"  {d}" for d in diagnostics)
        raise PreprocessError(
            f"{diagnostics[0].file}:{diagnostics[0].line}: {len(diagnostics)} preprocessor "
            f"warning(s), errors in strict mode:\n{listing}"
        )
    return PreprocessResult(output, diagnostics, tuple(pp._included))
