"""Names from files, made safe for each place they are shown.

Tensor, shard and model names come from files the user did not write.  Each
function here makes one kind of output safe and leaves ordinary names
(``encoder.layer.0.attention.self.query.weight``) exactly as they are.  JSON
needs none of this: ``json.dumps`` escapes by itself.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from collections.abc import Iterable

# Bidirectional controls (they reorder what a terminal or browser shows) and
# the Unicode non-characters that XML 1.0 forbids.
_INVISIBLE = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NONCHARACTERS = frozenset("\ufffe\uffff")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CONTROL_CATEGORIES = frozenset(("Cc", "Cs", "Zl", "Zp"))  # C0, DEL, C1, surrogates, U+2028/9

CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
FIGURE_WIDTH = 80  # characters of a name in a figure title or legend
FILE_NAME_LIMIT = 120  # characters of a generated file name, well under 255 bytes


def _escape_char(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _is_control(char: str) -> bool:
    return (
        unicodedata.category(char) in _CONTROL_CATEGORIES
        or char in _INVISIBLE
        or char in _NONCHARACTERS
    )


def terminal(text: object) -> str:
    """Text for a terminal, stderr or a log: control characters shown escaped.

    Stops escape-sequence injection (ESC colour/title/hyperlink sequences, C1
    controls), forged lines (CR, LF, U+2028/U+2029 turn one message into two,
    e.g. a fake ``spectralyzer: error:`` line), bidi-override reordering, and
    the crash of printing a lone surrogate.  ``\\x1b``, ``\\n`` and the like are
    written instead, so one message stays one line.
    """
    text = str(text)
    if not any(_is_control(char) for char in text):
        return text
    return "".join(_escape_char(c) if _is_control(c) else c for c in text)


def csv_cell(text: object) -> str:
    """One CSV cell: control characters escaped, formula prefixes neutralised.

    Stops CSV injection (OWASP): a spreadsheet runs a cell starting with
    ``= + - @``, tab or CR as a formula (``=HYPERLINK(...)``, DDE), so such a
    cell gets a leading ``'``.  Escaping control characters keeps one record on
    one line for tools that read CSV line by line.
    """
    text = str(text)
    prefix = "'" if text.startswith(CSV_FORMULA_PREFIXES) else ""
    return prefix + terminal(text)


def markdown(text: object) -> str:
    """Text for Markdown (report.md, the gate summary, ``$GITHUB_STEP_SUMMARY``).

    Stops HTML injection (``<script>``, ``<img onerror=...>`` are escaped to
    inert text), table breaking (``|`` escaped, newlines shown as ``\\n``),
    code spans, links, images and math taking over (backslash, backtick,
    brackets and ``$`` escaped).  Renders as the original text.
    """
    text = html.escape(terminal(text), quote=False)
    return re.sub(r"([\\`|\[\]$])", r"\\\1", text)


def markdown_code(text: object) -> str:
    """A name as inline code in Markdown when that is safe, else as escaped text.

    Inside a code span Markdown escapes and HTML entities are shown literally,
    so a name that needs escaping (see :func:`markdown`) is written as plain
    escaped text instead of a code span it could break out of with a backtick.
    """
    text = str(text)
    safe = markdown(text)
    return f"`{text}`" if safe == text else safe


def xml_text(text: object) -> str:
    """Text for an XML 1.0 attribute or element (JUnit): always well-formed.

    XML 1.0 forbids most C0 controls, lone surrogates and U+FFFE/U+FFFF even
    as character references, so one such name makes the whole report
    unreadable to a CI system; they are written escaped (``\\x1b``), as are
    newlines (a CI log shows the name on one line).  ElementTree escapes
    ``< > & "`` itself.
    """
    return terminal(text)


def shorten_middle(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters by an ellipsis in the middle (both ends kept)."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    tail = width - 1 - head
    return text[:head] + "…" + (text[-tail:] if tail else "")


def figure_text(text: object, width: int = FIGURE_WIDTH) -> str:
    """A name for a matplotlib title, legend or annotation.

    Stops mathtext parsing (a name like ``$\\cmd$`` raises in matplotlib's math
    parser and aborts the figure): every ``$`` is escaped, which matplotlib
    shows as a plain ``$``.  Long names are shortened in the middle to
    ``width`` characters so titles fit; control characters are escaped
    (missing glyphs, forged lines).
    """
    return shorten_middle(terminal(text), width).replace("$", r"\$")


def file_names(
    names: Iterable[str], prefix: str = "", suffix: str = "", limit: int = FILE_NAME_LIMIT
) -> dict[str, str]:
    """A distinct, safe file name for each name: ``prefix + slug + suffix``.

    Stops path tricks and overlong names (only ``[A-Za-z0-9_.-]`` are kept,
    the whole name is capped at ``limit`` characters, well under the 255 bytes
    file systems allow) and silent overwrites: a name whose slug had to change,
    or that would clash with another (also ignoring case, as macOS and Windows
    do), gets a short hash of the name appended.  Ordinary names keep
    ``prefix + name + suffix``.
    """
    names = list(dict.fromkeys(names))
    room = limit - len(prefix) - len(suffix)
    slugs = {name: re.sub(r"[^A-Za-z0-9_.-]", "_", name) for name in names}
    out: dict[str, str] = {}
    taken: set[str] = set()
    plain = [n for n in names if slugs[n] == n and len(n) <= room]
    rest = [n for n in names if n not in set(plain)]
    for name in plain + rest:
        candidate = prefix + slugs[name] + suffix
        if slugs[name] != name or len(name) > room or candidate.lower() in taken:
            digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
            candidate = _hashed(prefix, slugs[name], suffix, digest[:10], room)
            step = 10
            while candidate.lower() in taken:  # astronomically rare; stay unique anyway
                step += 1
                candidate = _hashed(prefix, slugs[name], suffix, digest[:step], room)
        out[name] = candidate
        taken.add(candidate.lower())
    return out


def _hashed(prefix: str, slug: str, suffix: str, digest: str, room: int) -> str:
    keep = max(room - len(digest) - 1, 0)
    return f"{prefix}{slug[:keep]}-{digest}{suffix}"
