"""What an analysis left out or folded together, as lines for people (issue 13).

JSON has the full lists (``summary["skipped"]``, ``summary["aliases"]``,
``summary["layout"]["ignored_files"]``); a table or Markdown output ends with
these lines, so a skipped expert MLP or a second checkpoint file beside the
model no longer goes unseen.  Skipped tensors are grouped by reason (a count
each); ``verbose`` lists every one with its shape.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


def listing_lines(summary: dict[str, Any], verbose: bool = False) -> list[str]:
    """Ignored files, aliases, then skipped tensors (grouped, or each when ``verbose``)."""
    lines = []
    ignored = (summary.get("layout") or {}).get("ignored_files") or []
    if ignored:
        lines.append("ignored files (not part of the model): " + ", ".join(ignored))
    aliases = summary.get("aliases") or {}
    if aliases:
        pairs = ", ".join(f"{alias} = {canonical}" for alias, canonical in aliases.items())
        lines.append(f"aliases (same data, analysed once under the second name): {pairs}")
    return lines + skipped_lines(summary.get("skipped") or [], verbose)


def skipped_lines(skipped: list[dict[str, Any]], verbose: bool = False) -> list[str]:
    """``skipped <count>: <reason>`` per reason, most frequent first; or one line per tensor."""
    if verbose:
        return [
            f"skipped {s['name']} ({'x'.join(map(str, s['shape']))}): {s['reason']}"
            for s in skipped
        ]
    counts = Counter(s["reason"] for s in skipped)
    lines = [f"skipped {count}: {reason}" for reason, count in counts.most_common()]
    if lines:
        lines.append("(-v lists each skipped tensor)")
    return lines
