"""Dequantisation formulas: packed integers or fp8 and their scales -> a dense float32 matrix.

Pure functions on tensors (docs/theory.md section 1.7). Every result is the
``(out, in)`` weight as ``nn.Linear`` stores it. The packing conventions are
those of the public loaders (AutoGPTQ/GPTQModel, AutoAWQ, DeepSeek-V3's
``fp8_cast_bf16``, compressed-tensors); the tests check each against an
independent implementation of the published formula.
"""

from __future__ import annotations

import math

import torch

#: AutoAWQ's GEMM kernels store the 8 nibbles of an int32 in the order
#: 0, 2, 4, 6, 1, 3, 5, 7 of their columns; this is the inverse permutation.
AWQ_UNPACK_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)


def expand_blocks(
    scale: torch.Tensor, shape: tuple[int, int], block: tuple[int, int]
) -> torch.Tensor:
    """A grid of per-block scales repeated to cover a ``shape`` matrix (edge blocks cropped).

    ``scale[i, j]`` applies to rows ``i*block[0] ...`` and columns ``j*block[1] ...``;
    a 0-d or one-element scale applies to everything.
    """
    scale = scale.float()
    if scale.numel() == 1:
        return scale.reshape(1, 1).expand(shape)
    grid = scale.reshape(scale.shape[0], -1) if scale.dim() != 1 else scale.reshape(-1, 1)
    full = grid.repeat_interleave(block[0], dim=0).repeat_interleave(block[1], dim=1)
    return full[: shape[0], : shape[1]]


def block_size(
    shape: tuple[int, int], grid: tuple[int, ...], preferred: tuple[int, int] = (128, 128)
) -> tuple[int, int] | None:
    """The block ``(rows, cols)`` each entry of a ``grid`` of scales covers, or None.

    A dimension's block is its ``preferred`` size when ``ceil(dim / preferred)`` matches the
    grid (DeepSeek-V3's 128 x 128, also when the dimension is not a multiple of
    it), else ``ceil(dim / grid)`` when that tiles it; a missing or unit grid
    dimension covers the whole dimension.
    """
    dims = list(grid) + [1] * (2 - len(grid))
    if len(dims) != 2:
        return None
    sizes = []
    for dim, count, wanted in zip(shape, dims, preferred, strict=True):
        if count == 1:
            sizes.append(dim)
        elif math.ceil(dim / wanted) == count:
            sizes.append(wanted)
        elif count > 0 and math.ceil(dim / math.ceil(dim / count)) == count:
            sizes.append(math.ceil(dim / count))
        else:
            return None
    return sizes[0], sizes[1]


def dequantise_scaled(
    weight: torch.Tensor,
    scale: torch.Tensor,
    block: tuple[int, int],
    zero_point: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(w - z) * s`` blockwise: fp8 with block (``weight_scale_inv``), per-channel or
    per-tensor scales (``weight_scale``), and int8 with optional zero points.

    DeepSeek-V3's ``weight_scale_inv`` is, despite its name, multiplied in.
    """
    shape = (weight.shape[0], weight.shape[1])
    values = weight.float()
    if zero_point is not None:
        values = values - expand_blocks(zero_point, shape, block)
    return values * expand_blocks(scale, shape, block)


def unpack(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Unpack ``32 // bits`` unsigned integers from each int32 along ``dim``, low bits first.

    ``(r, c)`` int32 -> ``(r * 32 // bits, c)`` for ``dim=0`` (GPTQ's qweight),
    ``(r, c * 32 // bits)`` for ``dim=1`` (qzeros, AWQ's qweight).
    """
    per_word = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    words = packed.to(torch.int32)
    if dim == 0:
        values = words.unsqueeze(1) >> shifts.view(1, per_word, 1)
        values = values.reshape(-1, words.shape[1])
    else:
        values = words.unsqueeze(2) >> shifts.view(1, 1, per_word)
        values = values.reshape(words.shape[0], -1)
    return values & ((1 << bits) - 1)


def dequantise_gptq(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    bits: int,
    zero_offset: int = 1,
) -> torch.Tensor:
    """GPTQ: ``W[o, i] = scales[g_idx[i], o] * (q[i, o] - (z[g_idx[i], o] + zero_offset))``.

    ``qweight`` packs the input dimension (``(in * bits / 32, out)``); ``qzeros``
    packs the output dimension. AutoGPTQ's format (``checkpoint_format`` "gptq")
    stores each zero point minus one, so ``zero_offset`` is 1; GPTQModel's "gptq_v2"
    stores it as is (0). ``g_idx`` maps each input row to its group, which with
    act-order (``desc_act``) is not ``i // group_size``.
    """
    q = unpack(qweight, bits, dim=0)
    zeros = unpack(qzeros, bits, dim=1)[:, : q.shape[1]] + zero_offset
    rows = g_idx.long()
    dense = (q - zeros[rows]).float() * scales.float()[rows]
    return dense.T.contiguous()


def dequantise_awq(
    qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int
) -> torch.Tensor:
    """AWQ (GEMM): ``W[o, i] = scales[i // g, o] * (q[i, o] - z[i // g, o])``.

    ``qweight`` ``(in, out * bits / 32)`` and ``qzeros`` pack the output dimension,
    nibbles in :data:`AWQ_UNPACK_ORDER`'s inverse; zero points are stored as is.
    """
    order = _awq_order(qweight.shape[1], bits)
    q = unpack(qweight, bits, dim=1)[:, order]
    zeros = unpack(qzeros, bits, dim=1)[:, order]
    rows = torch.arange(q.shape[0]) // group_size
    dense = (q - zeros[rows]).float() * scales.float()[rows]
    return dense.T.contiguous()


def _awq_order(words: int, bits: int) -> torch.Tensor:
    """Column permutation undoing AWQ's interleaving within each int32 word."""
    per_word = 32 // bits
    within = torch.tensor(AWQ_UNPACK_ORDER[:per_word] if per_word == 8 else range(per_word))
    return (torch.arange(words).unsqueeze(1) * per_word + within).reshape(-1)
