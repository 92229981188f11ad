"""Where a Lanczos basis lives: a tensor (maybe in a lower precision) or a temporary file.

A basis of ``steps`` vectors of ``dim`` numbers is the probes' largest memory
term (docs/theory.md section 4.14).  :func:`allocate` gives a tensor in the
requested dtype, or with ``"disk"`` a :class:`DiskBasis`: the vectors are
written to an unnamed temporary file (``$TMPDIR``) in the operator's own
precision and read back a block of columns at a time with ``pread``, so the
process holds one block (:data:`.lanczos.BLOCK_BYTES`), not the basis; the
file's pages sit in the OS page cache, which the kernel may write out and
drop under memory pressure.  The stored numbers are the same as in memory
(products with them may sum in another order, differing by rounding); each
Lanczos step reads the stored vectors four times.
"""

from __future__ import annotations

import os
import tempfile

import torch

#: What ``storage`` may be: None (the operator's dtype), a dtype, or "disk".
Storage = torch.dtype | str | None


class DiskBasis:
    """``(steps, dim)`` numbers of ``dtype`` in a temporary file; rows written, column blocks read."""

    def __init__(self, steps: int, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.shape = (steps, dim)
        self.dtype, self.device = dtype, device
        self._item = torch.empty((), dtype=dtype).element_size()
        self._file = tempfile.TemporaryFile()  # unnamed: gone when closed or at exit
        self._file.truncate(steps * dim * self._item)

    def __setitem__(self, row: int, vector: torch.Tensor) -> None:
        data = vector.detach().to("cpu", self.dtype).contiguous().view(torch.uint8).numpy()
        os.pwrite(self._file.fileno(), data.tobytes(), row * self.shape[1] * self._item)

    def block(self, rows: int, cols: slice) -> torch.Tensor:
        """``basis[:rows, cols]`` as a tensor on the device."""
        start, stop, _ = cols.indices(self.shape[1])
        width = stop - start
        out = torch.empty((rows, width), dtype=self.dtype)
        raw = out.view(torch.uint8).numpy().reshape(rows, width * self._item)
        for row in range(rows):
            offset = (row * self.shape[1] + start) * self._item
            raw[row] = memoryview(os.pread(self._file.fileno(), width * self._item, offset))
        return out.to(self.device)

    def rows(self, count: int) -> DiskBasis:
        """The first ``count`` rows (the same file)."""
        view = object.__new__(DiskBasis)
        view.__dict__.update(self.__dict__)
        view.shape = (count, self.shape[1])
        return view

    def close(self) -> None:
        self._file.close()


Basis = torch.Tensor | DiskBasis


def allocate(steps: int, dim: int, storage: Storage, like: torch.Tensor) -> Basis:
    """Room for ``steps`` vectors like ``like``: in ``storage`` (dtype, None or "disk")."""
    if storage == "disk":
        return DiskBasis(steps, dim, like.dtype, like.device)
    dtype = storage if isinstance(storage, torch.dtype) else like.dtype
    return torch.empty((steps, dim), dtype=dtype, device=like.device)


def block(basis: Basis, rows: int, cols: slice) -> torch.Tensor:
    """``basis[:rows, cols]`` whichever the storage."""
    return basis[:rows, cols] if isinstance(basis, torch.Tensor) else basis.block(rows, cols)


def first_rows(basis: Basis, count: int) -> Basis:
    return basis[:count] if isinstance(basis, torch.Tensor) else basis.rows(count)
