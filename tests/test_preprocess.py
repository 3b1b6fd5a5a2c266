"""Unit tests of kiln.preprocess (no subprocesses; GNU cpp parity is in test_preprocess_corpus)."""

from __future__ import annotations

import calendar
import time
from pathlib import Path

import pytest

import kiln.preprocess as preprocess_module
from kiln.errors import PreprocessError
from kiln.preprocess import (
    Diagnostic,
    PreprocessResult,
    default_include_path,
    preprocess_file,
    preprocess_text,
)

pytestmark = pytest.mark.usefixtures("no_subprocess")


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    """A build context directory (the first include directory)."""
    path = tmp_path / "ctx"
    path.mkdir()
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def run(ctx: Path, text: str, *, strict: bool = False, **defines: str) -> PreprocessResult:
    """Preprocess ``text`` as ``ctx/main.in`` with ``ctx`` as the only include directory."""
    return preprocess_file(write(ctx / "main.in", text), [ctx], defines, strict=strict)


def error_of(ctx: Path, text: str, **defines: str) -> str:
    with pytest.raises(PreprocessError) as info:
        run(ctx, text, **defines)
    return str(info.value)


def locations(result: PreprocessResult) -> list[tuple[str, int]]:
    return [(d.file.name, d.line) for d in result.diagnostics]


# ---- API ----------------------------------------------------------------------------------


def test_diagnostic_str_is_path_line_message() -> None:
    assert str(Diagnostic(Path("builds/a.in"), 7, "oops")) == "builds/a.in:7: oops"


def test_default_include_path_order(tmp_path: Path) -> None:
    package_includes = Path(preprocess_module.__file__).resolve().parent / "includes"
    assert default_include_path(tmp_path / "c", tmp_path / "i") == (
        tmp_path / "c",
        tmp_path / "i",
        package_includes,
    )
    assert default_include_path(tmp_path / "c", None) == (tmp_path / "c", package_includes)
    assert default_include_path(tmp_path, tmp_path) == (tmp_path, package_includes)


def test_preprocess_text_and_file_agree(ctx: Path) -> None:
    write(ctx / "step.inc", "RUN step\n")
    text = 'FROM x\n#include "step.inc"\n'
    from_file = run(ctx, text)
    from_text = preprocess_text(text, ctx / "main.in", [ctx])
    assert from_file.text == from_text.text == "FROM x\nRUN step\n"
    assert from_file.included_files == (ctx / "main.in", ctx / "step.inc")
    assert from_text.included_files == (ctx / "step.inc",)


# ---- cpp -traditional semantics -------------------------------------------------------------


def test_text_survives_unchanged(ctx: Path) -> None:
    text = (
        "FROM --platform=linux/amd64 debian:bookworm\n"
        "RUN curl -fsSL https://example.com/a//b -o /tmp/x // trailing\n"
        "LABEL description=\"It's the image's label\"\n"
        "RUN echo it's $HOME ${HOME:-/root} $$ ${#PATH} `date` 2>&1 | tee log ??= ??/\n"
        'CMD ["sh", "-c", "echo {\\"a\\": 1}"]\n'
        "RUN echo unix linux i386 __linux__ __GNUC__ __STDC__ grüße 中文 🐳\n"
    )
    result = run(ctx, text)
    assert result.text == text
    assert result.diagnostics == ()


def test_macros_expand_like_traditional_cpp(ctx: Path) -> None:
    text = (
        "#define HOST mirror.example.org\n"
        "#define Q(x) [x] \"x\" 'x'\n"
        "RUN curl https://HOST/path // see HOST\n"
        "RUN echo \"HOST\" 'HOST' it's HOST\n"
        "RUN echo Q(a b) Q( spaced ) 1HOST HOST1 x86_64\n"
        "RUN echo a/**/b Q(y)z\n"
    )
    assert run(ctx, text).text == (
        "RUN curl https://mirror.example.org/path // see mirror.example.org\n"
        "RUN echo \"HOST\" 'HOST' it's HOST\n"
        "RUN echo [a b] \"a b\" 'a b' [ spaced ] \" spaced \" ' spaced ' 1mirror.example.org HOST1 x86_64\n"
        "RUN echo ab [y] \"y\" 'y'z\n"
    )


def test_no_stringify_or_paste_in_traditional_mode(ctx: Path) -> None:
    assert run(ctx, "#define S(x) #x a##x\nRUN S(q)\n").text == "RUN #q a##q\n"


def test_comments_are_removed_and_continuations_kept(ctx: Path) -> None:
    text = (
        "/* header\n   RUN not an instruction\n*/\n"
        "FROM x /* base */\n"
        "RUN a /* spans\n   lines */ b \\\n"
        "    && c\n"
    )
    assert run(ctx, text).text == "FROM x\nRUN a  b \\\n    && c\n"


def test_multiline_define_is_one_line(ctx: Path) -> None:
    text = "#define INSTALL(p) apt-get update && \\\n    apt-get install -y p\nRUN INSTALL(git)\n"
    assert run(ctx, text).text == "RUN apt-get update &&     apt-get install -y git\n"


def test_multiline_macro_invocation_becomes_one_line(ctx: Path) -> None:
    assert run(ctx, "#define F(a, b) <a|b>\nRUN F(1,\n  2) tail\n").text == "RUN <1|   2> tail\n"


def test_conditionals_and_defines(ctx: Path) -> None:
    text = (
        "#if (MAJOR * 100 + MINOR) >= 312 && defined(DEBUG)\nRUN new-debug\n"
        "#elif MAJOR == 3\nRUN three\n#else\nRUN other\n#endif\n"
        "#ifdef NOPE\nRUN nope\n#elifdef DEBUG\nRUN elifdef\n#endif\n"
        "#ifndef DEBUG\nRUN no-debug\n#endif\n"
        "RUN [EMPTY]\n"
    )
    result = run(ctx, text, MAJOR="3", MINOR="12", DEBUG="1", EMPTY="")
    assert result.text == "RUN new-debug\nRUN elifdef\nRUN []\n"
    assert run(ctx, text, MAJOR="3", MINOR="8").text == "RUN three\nRUN no-debug\nRUN [EMPTY]\n"


def test_function_like_define_from_mapping(ctx: Path) -> None:
    assert run(ctx, "RUN echo IMG(app)\n", **{"IMG(n)": "registry/n"}).text == "RUN echo registry/app\n"


@pytest.mark.parametrize("name", ["1X", "A B", "A-B", ""])
def test_invalid_define_names_are_rejected(ctx: Path, name: str) -> None:
    assert "invalid definition" in error_of(ctx, "RUN x\n", **{name: "1"})


def test_undef_and_redefinition(ctx: Path) -> None:
    result = run(ctx, "#define T make\nRUN T\n#undef T\nRUN T\n#define T a\n#define T b\nRUN T\n")
    assert result.text == "RUN make\nRUN T\nRUN b\n"
    assert locations(result) == [("main.in", 6)]
    assert "redefined" in result.diagnostics[0].message


def test_directives_only_in_column_zero(ctx: Path) -> None:
    result = run(ctx, "  #define X y\n/* c */#define Z w\n    # indented comment\nRUN X Z\n")
    assert result.text == "  #define X y\n#define Z w\n    # indented comment\nRUN X Z\n"
    assert locations(result) == [("main.in", 1), ("main.in", 2)]
    assert all("column 0" in d.message for d in result.diagnostics)


def test_pragma_and_ident_pass_through(ctx: Path) -> None:
    assert run(ctx, '#pragma foo bar\n#ident "x"\nRUN a\n').text == '#pragma foo bar\n#ident "x"\nRUN a\n'


def test_crlf_bom_and_blank_lines(ctx: Path) -> None:
    path = ctx / "main.in"
    path.write_bytes(
        b"\xef\xbb\xbfFROM x\r\n\r\nRUN a \\\r\n  b\r\n#ifdef X\r\nRUN x\r\n#endif\r\nRUN c\rRUN d\r\n"
    )
    result = preprocess_file(path, [ctx])
    assert result.text == "FROM x\n\nRUN a \\\n  b\nRUN c\nRUN d\n"


def test_heredoc_blank_lines_and_hash_lines(ctx: Path) -> None:
    text = "COPY <<EOF /etc/motd\nline one\n\nline three\nEOF\nRUN <<EOF\n#!/bin/sh\necho hi\nEOF\n"
    result = run(ctx, text)
    assert result.text == "COPY <<EOF /etc/motd\nline one\n\nline three\nEOF\nRUN <<EOF\necho hi\nEOF\n"
    assert locations(result) == [("main.in", 7)]


def test_invalid_utf8_is_an_error_with_line(ctx: Path) -> None:
    path = ctx / "main.in"
    path.write_bytes(b"FROM x\nRUN \xff\n")
    with pytest.raises(PreprocessError, match=r"main\.in:2: not valid UTF-8"):
        preprocess_file(path, [ctx])


def test_missing_main_file(ctx: Path) -> None:
    with pytest.raises(PreprocessError, match="nope.in"):
        preprocess_file(ctx / "nope.in", [ctx])


def test_no_line_markers_in_output(ctx: Path) -> None:
    write(ctx / "a.inc", "RUN a\n" + "\n" * 20 + "RUN b\n")
    text = run(ctx, '#include "a.inc"\n' + "\n" * 20 + "RUN c\n").text
    assert "#line" not in text
    assert not any(line.startswith("# ") for line in text.splitlines())


# ---- includes --------------------------------------------------------------------------------


def test_include_search_order(tmp_path: Path) -> None:
    dirs = [tmp_path / "context", tmp_path / "repo-includes", tmp_path / "package-includes"]
    for directory in dirs:
        write(directory / "step", f"RUN from {directory.name}\n")
    main = write(tmp_path / "builds" / "app.in", '#include "step"\n#include <step>\n')
    for expected in dirs:
        result = preprocess_file(main, dirs)
        assert result.text == f"RUN from {expected.name}\n" * 2
        assert result.included_files == (main, expected / "step")
        (expected / "step").unlink()


def test_quote_include_searches_including_files_directory_first(ctx: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write(lib / "sub" / "outer.inc", '#include "inner.inc"\n#include <inner.inc>\n')
    write(lib / "sub" / "inner.inc", "RUN sub-inner\n")
    write(lib / "inner.inc", "RUN lib-inner\n")
    main = write(ctx / "main.in", '#include "sub/outer.inc"\n')
    result = preprocess_file(main, [ctx, lib])
    assert result.text == "RUN sub-inner\nRUN lib-inner\n"
    assert result.included_files == (main, lib / "sub/outer.inc", lib / "sub/inner.inc", lib / "inner.inc")


def test_include_twice_guard_and_pragma_once(ctx: Path) -> None:
    write(ctx / "plain.inc", "RUN plain\n")
    write(ctx / "guarded.inc", "/* guard */\n#ifndef G\n#define G\nRUN guarded\n#endif\n")
    write(ctx / "once.inc", "#pragma once\nRUN once\n")
    text = "".join(f'#include "{n}.inc"\n' * 2 for n in ("plain", "guarded", "once"))
    result = run(ctx, text)
    assert result.text == "RUN plain\nRUN plain\nRUN guarded\nRUN once\n"
    names = [p.name for p in result.included_files]
    assert names == ["main.in", "plain.inc", "guarded.inc", "once.inc"]


def test_include_by_macro(ctx: Path) -> None:
    write(ctx / "x.inc", "RUN x\n")
    assert run(ctx, '#define F "x.inc"\n#include F\n').text == "RUN x\n"


def test_missing_include_lists_search_path(ctx: Path, tmp_path: Path) -> None:
    other = tmp_path / "includes"
    main = write(ctx / "main.in", 'FROM x\n\n#include "nope.inc"\n')
    with pytest.raises(PreprocessError) as info:
        preprocess_file(main, [ctx, other])
    message = str(info.value)
    assert message.startswith(f"{main}:3: ")
    assert '"nope.inc"' in message
    assert f"\n  {ctx}\n" in message and f"\n  {other}" in message


def test_include_cycle_shows_chain(ctx: Path) -> None:
    write(ctx / "a.inc", 'RUN a\n#include "b.inc"\n')
    write(ctx / "b.inc", '\n#include "a.inc"\n')
    message = error_of(ctx, 'FROM x\n#include "a.inc"\n')
    assert message.startswith(f"{ctx / 'b.inc'}:2: include cycle: ")
    assert f"{ctx / 'a.inc'}:2 -> {ctx / 'b.inc'}:2 -> {ctx / 'a.inc'}" in message


def test_self_include_is_a_cycle(ctx: Path) -> None:
    assert "include cycle" in error_of(ctx, '#include "main.in"\n')


def test_guarded_mutual_includes_are_not_a_cycle(ctx: Path) -> None:
    write(ctx / "a.inc", '#ifndef A\n#define A\n#include "b.inc"\nRUN a\n#endif\n')
    write(ctx / "b.inc", '#ifndef B\n#define B\n#include "a.inc"\nRUN b\n#endif\n')
    assert run(ctx, '#include "a.inc"\n').text == "RUN b\nRUN a\n"


@pytest.mark.parametrize("name", ["/etc/passwd", "../secret", "sub/../../secret", "~/x"])
def test_hostile_includes_are_refused(ctx: Path, name: str) -> None:
    write(ctx.parent / "secret", "RUN leaked\n")
    write(ctx / "sub" / "x", "RUN x\n")
    message = error_of(ctx, f'FROM x\n#include "{name}"\n')
    assert message.startswith(f"{ctx / 'main.in'}:2: refusing #include")
    assert "leaked" not in message


def test_symlink_out_of_the_search_path_is_refused(ctx: Path) -> None:
    write(ctx.parent / "secret", "RUN leaked\n")
    (ctx / "link.inc").symlink_to(ctx.parent / "secret")
    message = error_of(ctx, '#include "link.inc"\n')
    assert "refusing" in message and "outside the include search path" in message


def test_dotdot_inside_the_search_path_is_allowed(ctx: Path, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    write(lib / "common" / "c.inc", "RUN common\n")
    write(lib / "sub" / "s.inc", '#include "../common/c.inc"\n')
    main = write(ctx / "main.in", '#include "sub/s.inc"\n')
    assert preprocess_file(main, [ctx, lib]).text == "RUN common\n"


def test_diagnostics_in_included_files_name_them(ctx: Path) -> None:
    write(ctx / "inc" / "x.inc", "RUN a\n# install stuff\n")
    result = run(ctx, '#include "inc/x.inc"\n')
    assert [(str(d.file), d.line) for d in result.diagnostics] == [(str(ctx / "inc" / "x.inc"), 2)]


# ---- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("FROM x\nRUN rm -rf /var/lib/apt/lists/*\nRUN y\n", 2, "unterminated comment"),
        ("FROM x\n#ifdef X\nRUN x\n", 2, "unterminated #ifdef X"),
        ("FROM x\n#if 1\n#else\nRUN x\n", 2, "unterminated #if 1"),
        ("FROM x\n#error stop right here\n", 2, "#error stop right here"),
        ("#define\n", 1, "macro name expected"),
        ("RUN x\n#define 1x y\n", 2, "macro name expected"),
        ("#define F(x\n", 1, "unterminated argument list"),
        ("#undef\n", 1, "#undef: macro name expected"),
        ("#ifdef\n#endif\n", 1, "#ifdef: macro name expected"),
        ("#ifndef 3\n#endif\n", 1, "#ifndef: macro name expected"),
        ("#if\n#endif\n", 1, "#if with no expression"),
        ("#if 0\n#elif\n#endif\n", 2, "#elif with no expression"),
        ("#if 1 +\n#endif\n", 1, "cannot evaluate"),
        ("#if !\n#endif\n", 1, "cannot evaluate"),
        ("#if !defined\n#endif\n", 1, "'defined' needs a macro name"),
        ("RUN x\n#if defined(X\n#endif\n", 2, "'defined' needs a macro name"),
        ("#include\n", 1, "#include expects"),
        ("#include foo.inc\n", 1, "#include expects"),
        ("#include <foo.inc\n", 1, "missing '>'"),
        ('#include ""\n', 1, "empty file name"),
        ("RUN x\n#else\n", 2, "#else without #if"),
        ("#endif\n", 1, "#endif without #if"),
        ("#elif 1\n", 1, "#elif without #if"),
        ("#define F(a, b) a b\nRUN F(1)\n", 2, "requires 2 arguments"),
        ("#define F(a) a\nRUN F(1\nRUN more\n", 2, "unterminated argument list"),
        ('#include_next "x"\n', 1, "not supported"),
    ],
)
def test_errors_carry_file_and_line(ctx: Path, text: str, line: int, fragment: str) -> None:
    message = error_of(ctx, text)
    assert message.startswith(f"{ctx / 'main.in'}:{line}: "), message
    assert fragment in message


def test_errors_in_skipped_branches_are_ignored_like_cpp(ctx: Path) -> None:
    text = "#if 0\n#ifdef\n#endif\n#if\n#endif\n#include\n#define\n# install\n#error no\n#endif\nRUN ok\n"
    result = run(ctx, text)
    assert result.text == "RUN ok\n"
    assert result.diagnostics == ()


def test_comment_like_directive_error_has_hint(ctx: Path) -> None:
    assert "indent the comment" in error_of(ctx, "# if you want more, edit this\n")
    assert "indent the comment" in error_of(ctx, "# error handling follows\n")
    assert "indent the comment" not in error_of(ctx, "#error real error\n")


def test_error_message_lists_earlier_warnings(ctx: Path) -> None:
    text = "FROM x\n#ifdef DEBUG\nRUN rm -f /tmp/*.log\n#endif\nRUN release */\n"
    message = error_of(ctx, text, DEBUG="1")
    assert message.startswith(f"{ctx / 'main.in'}:2: unterminated #ifdef DEBUG")
    assert f"{ctx / 'main.in'}:3: '/*'" in message


def test_error_in_include_names_the_include(ctx: Path) -> None:
    write(ctx / "bad.inc", "RUN a\n#if 1\n")
    assert error_of(ctx, '#include "bad.inc"\n').startswith(f"{ctx / 'bad.inc'}:2: unterminated #if")


# ---- warnings, strict mode ---------------------------------------------------------------------


def test_non_directive_hash_lines_are_dropped_with_warning(ctx: Path) -> None:
    result = run(ctx, "# Install deps\nFROM x\n#!/bin/sh\n#\n# 3 apples\nRUN a # inline\n")
    assert result.text == "FROM x\nRUN a # inline\n"
    assert locations(result) == [("main.in", 1), ("main.in", 3), ("main.in", 5)]
    assert "'# Install deps' is not a preprocessor directive" in result.diagnostics[0].message


def test_strict_mode_raises_listing_every_warning(ctx: Path) -> None:
    text = "# one\nFROM x\n# two\nRUN echo __LINE__\n"
    assert len(run(ctx, text).diagnostics) == 3
    with pytest.raises(PreprocessError) as info:
        run(ctx, text, strict=True)
    message = str(info.value)
    main = ctx / "main.in"
    assert message.startswith(f"{main}:1: 3 preprocessor warning(s)")
    for line in (1, 3, 4):
        assert f"\n  {main}:{line}: " in message


def test_strict_mode_passes_clean_files(ctx: Path) -> None:
    assert run(ctx, "FROM x\n  # fine\nRUN a /* note */\n", strict=True).text == "FROM x\n  # fine\nRUN a\n"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("RUN rm -rf /var/lib/apt/lists/*\nRUN swallowed\nRUN x */ tail\n", "glued to"),
        ("RUN cp /*.conf /etc/ */\n", "followed by '.'"),
        ("RUN rm -rf /*\nRUN gone */\n", "ends a line of text"),
        ("RUN make /* note\nRUN swallowed */\n", "swallows Dockerfile instructions"),
        ('RUN make /* note\n#include "x" */\n', "swallows Dockerfile instructions or directives"),
    ],
)
def test_glob_comment_hazard(ctx: Path, line: str, reason: str) -> None:
    result = run(ctx, "FROM x\n" + line)
    assert locations(result) == [("main.in", 2)]
    message = result.diagnostics[0].message
    assert reason in message and "opens a C comment" in message and "?*" in message


def test_glob_hazard_says_what_was_swallowed(ctx: Path) -> None:
    result = run(ctx, "RUN rm -rf /var/lib/apt/lists/*\nRUN echo gone\nRUN rm /a/*/b\n")
    assert result.text == "RUN rm -rf /var/lib/apt/listsb\n"
    message = result.diagnostics[0].message
    assert "lines 1-3" in message and "RUN echo gone" in message and "'b'" in message


@pytest.mark.parametrize(
    "text",
    [
        "/* header comment\n   RUN not-an-instruction\n*/\nFROM x\n",
        "FROM x /* base image */\n",
        "RUN make /* this builds\n   everything */\n",
        "RUN echo a/**/b\n",
        "RUN echo \"/* in a string */\" '/* in quotes */'\n",
        "RUN ls /etc/?*.conf\n",
    ],
)
def test_intended_comments_are_not_hazards(ctx: Path, text: str) -> None:
    assert run(ctx, text).diagnostics == ()


def test_dollar_macro_hazard(ctx: Path) -> None:
    text = (
        '#define VERSION 2.0\nRUN echo $VERSION ${VERSION} ${VERSION:-1}\nENV P=$PORT\nRUN echo "$VERSION"\n'
    )
    result = run(ctx, text, PORT="8080")
    assert result.text == 'RUN echo $2.0 ${2.0} ${2.0:-1}\nENV P=$8080\nRUN echo "$VERSION"\n'
    assert locations(result) == [("main.in", 2), ("main.in", 3)]
    first, second = (d.message for d in result.diagnostics)
    assert f"VERSION is a macro (#define at {ctx / 'main.in'}:1)" in first
    assert "'$VERSION' becomes '$2.0', '${VERSION}' becomes '${2.0}', '${VERSION' becomes '${2.0'" in first
    assert "PORT is a macro (-D)" in second and "'$PORT' becomes '$8080'" in second


def test_dollar_function_macro_only_when_invoked(ctx: Path) -> None:
    text = "#define F(x) x\nRUN echo $F ${F}\nRUN echo $F(1)\n"
    result = run(ctx, text)
    assert result.text == "RUN echo $F ${F}\nRUN echo $1\n"
    assert locations(result) == [("main.in", 3)]


def test_builtin_macro_hazards(ctx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # 2023-11-14 22:13:20 UTC
    write(ctx / "x.inc", "RUN __FILE__ __INCLUDE_LEVEL__\n")
    text = 'FROM x\nRUN __LINE__ \\\n  __LINE__\nLABEL d=__DATE__ t=__TIME__\n#include "x.inc"\n'
    result = run(ctx, text)
    main, inc = ctx / "main.in", ctx / "x.inc"
    assert result.text == (f'FROM x\nRUN 2 \\\n  3\nLABEL d="Nov 14 2023" t="22:13:20"\nRUN "{inc}" 1\n')
    assert [(str(d.file), d.line) for d in result.diagnostics] == [
        (str(main), 2),
        (str(main), 3),
        (str(main), 4),
        (str(main), 4),
        (str(inc), 1),
        (str(inc), 1),
    ]
    assert "__LINE__ is replaced by cpp with 2" in result.diagnostics[0].message
    assert '__DATE__ is replaced by cpp with "Nov 14 2023"' in result.diagnostics[2].message


def test_date_uses_cpp_format(ctx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(calendar.timegm((2026, 3, 5, 12, 0, 0))))
    assert run(ctx, "RUN __DATE__\n").text == 'RUN "Mar  5 2026"\n'


def test_builtins_in_quotes_are_not_hazards(ctx: Path) -> None:
    result = run(ctx, 'LABEL x="__DATE__ __LINE__"\n')
    assert result.text == 'LABEL x="__DATE__ __LINE__"\n'
    assert result.diagnostics == ()


def test_macro_after_unmatched_quote_warns(ctx: Path) -> None:
    result = run(ctx, "#define NAME kiln\nRUN echo it's NAME\nRUN echo NAME\n")
    assert result.text == "RUN echo it's NAME\nRUN echo kiln\n"
    assert locations(result) == [("main.in", 2)]
    assert "unmatched '" in result.diagnostics[0].message


def test_comment_line_inside_continuation_warns(ctx: Path) -> None:
    text = "RUN apt-get install -y \\\n# the foo package\n    foo\n"
    result = run(ctx, text)
    assert result.text == text
    assert locations(result) == [("main.in", 2)]
    assert "continued instruction" in result.diagnostics[0].message


def test_warning_and_line_directives_warn(ctx: Path) -> None:
    result = run(ctx, "#warning check this\n#line 100\nRUN a\n")
    assert result.text == "RUN a\n"
    assert [d.message for d in result.diagnostics] == [
        "#warning check this",
        "#line is not supported by kiln; line ignored",
    ]


def test_large_file_is_fast(ctx: Path) -> None:
    body = "".join(f"RUN echo step {i} https://example.com/{i} $HOME VALUE\n" for i in range(3000))
    start = time.perf_counter()
    result = run(ctx, "#define VALUE v\n" + body)
    assert time.perf_counter() - start < 5
    assert result.text.count("\n") == 3000 and result.text.endswith("$HOME v\n")


# ---- cpp -traditional corners (each also in the GNU cpp corpus, tests/preprocess_corpus/) -------


@pytest.mark.parametrize(
    "directive",
    [
        "#/**/define A passed",
        "# /* c */ define A passed",
        "#define /* c */ A passed",
        "#define A /* leading comment of the body */ passed",
        "#define\t/* c */ A /* c */ passed /* c */",
    ],
)
def test_comments_in_a_directive_are_spaces(ctx: Path, directive: str) -> None:
    """cpp reads a comment in a directive as a space; kiln used to drop or refuse the directive."""
    result = run(ctx, f"{directive}\nRUN echo A\n", strict=True)
    assert result.text == "RUN echo passed\n"


def test_comments_around_directive_arguments(ctx: Path) -> None:
    write(ctx / "x.inc", "RUN included\n")
    text = (
        '# /* c */ include "x.inc"\n#include /* c */ "x.inc" /* c */\n'
        "#define F(x /**/, y) x+y\n#define S/**/(a) [a]\n#define FOO bar\n#define P FO/**/O\n"
        "#ifdef /* c */ FOO\nRUN F(1,2) S(2) P FO/**/O\n#endif\n"
        "#/**/ifndef /* c */ MISSING\nRUN not-missing\n#endif\n#undef/**/FOO\nRUN FOO\n"
    )
    assert run(ctx, text, strict=True).text == (
        "RUN included\nRUN included\nRUN 1+2 (a) [a](2) bar FOO\nRUN not-missing\nRUN FOO\n"
    )


def test_a_comment_between_words_of_an_if_expression_separates_them(ctx: Path) -> None:
    """'#if A/**/B' is 'A B' for cpp (an error), not the pasted name 'AB'."""
    assert "'A B'" in error_of(ctx, "#define AB 1\n#if A/**/B\n#endif\n")


def test_a_macro_that_opens_a_quote_quotes_the_rest_of_the_invocation_line(ctx: Path) -> None:
    text = (
        '#define SHC sh -c "\n#define APOS it\'s\n#define ID(x) x\n'
        'RUN SHC echo NAME" NAME\nRUN SHC echo NAME\nRUN NAME\nRUN APOS NAME\' NAME\n'
        'RUN ID(SHC) NAME" NAME\n'
    )
    result = run(ctx, text, NAME="kiln")
    assert result.text == (
        'RUN sh -c " echo NAME" kiln\nRUN sh -c " echo NAME\nRUN kiln\n'
        "RUN it's NAME' kiln\nRUN sh -c \" NAME\" kiln\n"
    )
    assert locations(result) == [("main.in", 4), ("main.in", 5), ("main.in", 7), ("main.in", 8)]
    assert 'the expansion of SHC leaves a " open' in result.diagnostics[0].message
    assert "the expansion of APOS leaves a ' open" in result.diagnostics[2].message


def test_a_comment_inside_a_quote_left_open_by_a_macro_is_text(ctx: Path) -> None:
    """cpp keeps '/* c */' inside the quote as text; one spanning lines kiln refuses."""
    text = '#define SHC sh -c "\nFROM x\nRUN SHC a /* c */ b" /* gone */ c\n'
    assert run(ctx, text).text == 'FROM x\nRUN sh -c " a /* c */ b"  c\n'
    message = error_of(ctx, '#define SHC sh -c "\nFROM x\nRUN SHC a /* c\n */ b"\n')
    assert message.startswith(f"{ctx / 'main.in'}:3: the comment '/* c\\n */' follows a \"")
    assert "the expansion of SHC leaves open" in message


def test_escaped_quotes_open_no_quote(ctx: Path) -> None:
    text = "RUN echo \\\"NAME\\\" \\'NAME\\' \"a\\\"NAME\" NAME\n"
    result = run(ctx, text, strict=True, NAME="kiln")
    assert result.text == "RUN echo \\\"kiln\\\" \\'kiln\\' \"a\\\"NAME\" kiln\n"


def test_a_quote_open_at_a_line_end_inside_arguments_goes_on(ctx: Path) -> None:
    """cpp joins the lines of a macro's arguments into one and keeps the quote open across."""
    text = (
        "#define PAIR(a, b) [a|b]\n"
        'RUN PAIR(echo "x,\n  NAME y", NAME) NAME\n'
        "RUN PAIR(it's,\n x', NAME) NAME\n"
    )
    result = run(ctx, text, strict=True, NAME="kiln")
    assert result.text == "RUN [echo \"x,   NAME y\"| kiln] kiln\nRUN [it's,  x'| kiln] kiln\n"


def test_an_argument_quote_that_never_closes_names_its_line(ctx: Path) -> None:
    message = error_of(ctx, "#define F(a) a\nFROM x\nRUN F(it's)\nRUN more\n")
    assert message.startswith(f"{ctx / 'main.in'}:3: unterminated argument list")
    assert "a ' opened on line 3 is never closed" in message


def test_arguments_inside_quotes_of_the_replacement_are_escaped_like_cpp(ctx: Path) -> None:
    text = "#define E(x) echo \"x\" 'x'\nRUN E(a \"b c\" d\\e)\n"
    assert run(ctx, text).text == "RUN echo \"a \\\"b c\\\" d\\e\" 'a \"b c\" d\\e'\n"


def test_function_like_macros_are_scanned_again_with_what_follows(ctx: Path) -> None:
    text = (
        "#define CALL(f) f(4)\n#define SELF(x) SELF\n#define APPLY(f, x) f(x)\n#define W(x) <x>\n"
        "#define CAT(a, b) a/**/b\n#define REC(x) x\n"
        "RUN CALL(CALL) SELF(1)(2)(3) APPLY(W, APPLY(W, 1)) CAT(NA,ME) REC(REC(REC(REC(2))))\n"
    )
    assert run(ctx, text, NAME="kiln").text == "RUN 4(4) SELF < < 1>> kiln 2\n"


def test_endless_recursion_is_refused_at_cpps_limit(ctx: Path) -> None:
    message = error_of(ctx, "#define F(x) [x F(x)]\nFROM x\nRUN F(1)\n")
    assert message.startswith(f"{ctx / 'main.in'}:3: macro F invokes itself more than 20 levels deep")
    assert "detected recursion" in message
    # Mutual recursion too; an object-like macro that names itself stays as it is (as in cpp).
    assert "macro G invokes itself" in error_of(ctx, "#define G(x) H(x)\n#define H(x) G(x)\nRUN G(1)\n")
    assert run(ctx, "#define PATH PATH:/x\nENV P=PATH\n").text == "ENV P=PATH:/x\n"


def test_a_function_like_name_before_a_directive_line_is_refused(ctx: Path) -> None:
    """cpp looks for the '(' on the next line and reads '#define ...' there as text."""
    message = error_of(ctx, "#define F(x) [x]\nRUN echo F\n#define G 1\nRUN G\n")
    assert message.startswith(f"{ctx / 'main.in'}:2: F is a function-like macro")
    assert f"{ctx / 'main.in'}:3: '#define G 1'" in message
    # Blank lines are skipped looking for '(', as cpp does; any other text ends the search.
    assert run(ctx, "#define F(x) [x]\nRUN F\n\n(2)\nRUN F\nRUN x\n").text == "RUN [2]\nRUN F\nRUN x\n"


def test_line_inside_a_multi_line_invocation_is_the_last_line_read(ctx: Path) -> None:
    text = "#define F(x) [x]\nRUN F(__LINE__\n  __LINE__) __LINE__\n"
    assert run(ctx, text).text == "RUN [3   3] 3\n"


@pytest.mark.parametrize(
    ("condition", "fragment"),
    [
        ("'a", "unterminated character literal \"'a\""),
        ("'", "unterminated character literal"),
        ("QUOTE", "unterminated character literal \"'x\""),
        ("''", "empty character constant"),
        ('"s"', "is a string"),
        ("1 1", "not a valid C integer expression"),
    ],
)
def test_quotes_in_if_are_clean_errors(ctx: Path, condition: str, fragment: str) -> None:
    """No Python exception text (IndexError('string index out of range')) reaches the user."""
    message = error_of(ctx, f"#define QUOTE 'x\nFROM x\n#if {condition}\n#endif\n")
    assert message.startswith(f"{ctx / 'main.in'}:3: "), message
    assert fragment in message
    assert "Error(" not in message and "Exception" not in message


def test_a_directive_line_inside_macro_arguments_is_refused(ctx: Path) -> None:
    """cpp collects the arguments across lines and reads '#ifdef X' there as text."""
    message = error_of(ctx, "#define F(a) [a]\nRUN F(1\n#ifdef X\n x\n#endif\n)\n")
    assert message.startswith(f"{ctx / 'main.in'}:3: '#ifdef X' is inside the arguments of F")
    assert "invoked on line 2" in message


def test_a_continuation_inside_a_name_or_after_a_backslash_is_spliced_first(ctx: Path) -> None:
    """cpp joins continued lines before it reads names and quotes."""
    text = (
        "#define Bx joined\n#define B alone\nRUN B\\\nx B\\\n  x\n"
        "RUN echo it's \\\\\nNAME' NAME\n"
    )
    assert run(ctx, text, NAME="kiln").text == "RUN joined alone\\\n  x\nRUN echo it's \\\\\nNAME' kiln\n"


def test_a_blank_argument_keeps_its_space(ctx: Path) -> None:
    text = (
        "#define ONE(x) [x]\n#define NONE() none\n#define Q(x) \"x\"\n"
        "RUN ONE( /* c */) ONE() NONE( ) Q(a  \nb)\n"
    )
    assert run(ctx, text).text == 'RUN [ ] [] none "a   b"\n'
