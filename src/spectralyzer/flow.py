"""Correlation flow: alpha along depth should be smooth (docs/theory.md section 3.9).

Martin & Mahoney (JMLR 2021, "correlation flow") plot alpha against depth for
the layers that play one role in a stack of repeated blocks: in a well-trained
network it drifts smoothly; a sudden jump marks a badly trained layer.

* Role and block come from the parameter name: the first dot-separated part that
  is an integer is the block index, and the name with that part replaced by
  ``*`` is the role (``encoder.layer.3.attention.self.query.weight`` is block 3
  of ``encoder.layer.*.attention.self.query.weight``).  Names with no integer
  part belong to no stack.
* Within a role of at least ``MIN_BLOCKS`` fitted layers, ordered by block, each
  layer is compared with the one of the previous block:
  ``flow_jump = alpha - alpha_prev`` and
  ``flow_z = flow_jump / sqrt(sigma^2 + sigma_prev^2)``
  (``sigma = (alpha - 1) / sqrt(n_tail)``, the fit's standard error); both are
  NaN for the first block.  A step in the flow shows as one jump, a lone
  outlier as two (into it and out of it).
* ``flow-jump`` warning: ``|flow_z| > FLOW_Z`` (fit noise alone rarely gets
  there: under 1% of pairs of independent matrices drawn from one law, whose
  ``|flow_z|`` exceeds 2 in 7-30% of pairs; ``tests/test_flow.py``) and
  ``|flow_jump| > FLOW_JUMP`` (large enough to matter: alpha's well-trained
  band [2, 6] is four units wide).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

MIN_BLOCKS = 3  # a role needs this many fitted layers to have a flow
FLOW_Z = 3.0  # |flow_z| above: the jump is larger than the fits' errors
FLOW_JUMP = 1.0  # |flow_jump| above (alpha units): large enough to matter
_INTEGER = re.compile(r"\d+")


def role_and_block(name: str) -> tuple[str, int] | None:
    """``(role, block)`` of a parameter name, or None when no part of it is an integer."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if _INTEGER.fullmatch(part):
            return ".".join([*parts[:i], "*", *parts[i + 1 :]]), int(part)
    return None


def roles(details: pd.DataFrame) -> dict[str, list[tuple[int, object]]]:
    """The flows of a per-layer table: role -> ``(block, row index)`` sorted by block, for
    the roles with at least ``MIN_BLOCKS`` rows of finite alpha and sigma."""
    found: dict[str, list[tuple[int, object]]] = {}
    for index, name, alpha, sigma in zip(
        details.index, details["name"], details["alpha"], details["sigma"], strict=True
    ):
        parsed = role_and_block(str(name))
        if parsed is not None and math.isfinite(alpha) and math.isfinite(sigma):
            found.setdefault(parsed[0], []).append((parsed[1], index))
    return {role: sorted(m) for role, m in found.items() if len(m) >= MIN_BLOCKS}


def correlation_flow(details: pd.DataFrame) -> pd.DataFrame:
    """``flow_jump`` and ``flow_z`` of every row of a per-layer table (NaN outside a flow).

    Uses the columns ``name``, ``alpha`` and ``sigma``; the result has the index
    of ``details``.
    """
    out = pd.DataFrame(math.nan, index=details.index, columns=["flow_jump", "flow_z"])
    for members in roles(details).values():
        rows = [index for _, index in members]
        alpha = details.loc[rows, "alpha"].to_numpy(dtype=float)
        sigma = details.loc[rows, "sigma"].to_numpy(dtype=float)
        jump = np.diff(alpha)
        out.loc[rows[1:], "flow_jump"] = jump
        out.loc[rows[1:], "flow_z"] = jump / np.hypot(sigma[1:], sigma[:-1])
    return out


def is_jump(flow_jump: float, flow_z: float) -> bool:
    """The ``flow-jump`` rule (module docstring)."""
    return abs(flow_z) > FLOW_Z and abs(flow_jump) > FLOW_JUMP


def with_flow(details: pd.DataFrame) -> pd.DataFrame:
    """``details`` with the flow columns and a ``flow-jump`` code added to ``warning``."""
    flow = correlation_flow(details)
    warning = [
        ";".join(filter(None, (w, "flow-jump" if is_jump(j, z) else "")))
        for w, j, z in zip(details["warning"], flow["flow_jump"], flow["flow_z"], strict=True)
    ]
    return details.assign(flow_jump=flow["flow_jump"], flow_z=flow["flow_z"], warning=warning)
