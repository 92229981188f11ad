"""ONNX models through the ``onnx`` package (the ``onnx`` extra): weights from the graph.

Every initializer and every ``Constant`` node's tensor (exporters put weights
in either, also inside ``If``/``Loop`` subgraphs) is listed once, in graph
order. A tensor the graph uses as a layer weight is listed as that layer sees
it, in PyTorch's ``(out, in)`` orientation:

==============================  ===========================================
use                             listed as
==============================  ===========================================
``MatMul(x, W)``                ``W`` transposed (ONNX stores ``(in, out)``)
``MatMul(W, x)``                ``W`` as is
``Gemm(x, W)``                  transposed unless ``transB=1``
``Conv``/``ConvTranspose``      the kernel as is (``(out, in, *k)``)
``LSTM``/``GRU``/``RNN`` W, R   one matrix per direction, named
                                ``<node>.weight_ih_l0`` / ``weight_hh_l0``
                                (``_reverse`` for the backward direction)
``Gather(W, ids)``              ``W`` as is (an embedding table)
==============================  ===========================================

A weight stored as integers behind a ``DequantizeLinear`` node (the QDQ format of
onnxruntime's quantiser) is listed as float32 and dequantised on load,
``(x - zero_point) * scale`` per tensor or along the node's ``axis``, then oriented
by the use of the node's output; its scale and zero point are listed as skipped.
A weight whose name does not end in ``weight`` (``onnx::MatMul_123``) is
listed as ``<node name>.weight``. Every other tensor keeps its name and stored
shape. External data is read on load, only from files inside the model's
folder; nothing is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ._common import reading, require_tensors
from .base import Checkpoint, TensorInfo
from .extras import import_extra

#: ONNX element types held here -> torch dtype names.
DTYPES = {
    "FLOAT": "float32",
    "FLOAT16": "float16",
    "DOUBLE": "float64",
    "BFLOAT16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}
_RECURRENT = {"LSTM", "GRU", "RNN"}
_AS_IS = {("Conv", 1), ("ConvTranspose", 1), ("Gather", 0)}


@dataclass(frozen=True)
class Entry:
    """One listed tensor: the stored tensor it reads, and how it is oriented."""

    info: TensorInfo
    tensor: Any  # onnx.TensorProto
    transpose: bool = False
    direction: int | None = None  # recurrent weights: the slice of dimension 0
    scale: Any = None  # DequantizeLinear's x_scale (TensorProto) when the tensor is quantised
    zero_point: Any = None  # and its x_zero_point
    axis: int = 1  # the axis a per-channel scale runs along


class OnnxCheckpoint(Checkpoint):
    """An ``.onnx`` file; tensor data (inline or external) is decoded one tensor at a time."""

    format = "onnx"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(Path(path))
        self._onnx = import_extra(self.path, "onnx", "ONNX", "onnx")
        with reading(self.path, "cannot read ONNX model"):
            model = self._onnx.load(os.fspath(self.path), load_external_data=False)
        stored, uses = _walk(self._onnx, model.graph)
        entries: dict[str, Entry] = {}
        helpers: dict[str, str] = {}  # scale / zero-point tensor -> problem
        for name, tensor in stored.items():
            quantised = _dequantize_node(uses.get(name, []), stored)
            for entry in self._entries(name, tensor, uses, stored, quantised, entries):
                if entry.info.name in entries:  # a node's name clashed: keep the stored one
                    entry = replace(entry, info=replace(entry.info, name=name))
                entries[entry.info.name] = entry
                for part, what in ((1, "scales"), (2, "zero points")):
                    if quantised is not None and len(quantised.input) > part:
                        helpers[quantised.input[part]] = f"quantisation {what} of {entry.info.name}"
        self._entries_by_name = {
            name: replace(e, info=replace(e.info, problem=helpers[name])) if name in helpers else e
            for name, e in entries.items()
        }
        self._infos = require_tensors(self.path, [e.info for e in self._entries_by_name.values()])

    def _entries(
        self, name: str, tensor: Any, uses: dict, stored: dict, quantised: Any, taken: dict
    ) -> list[Entry]:
        """The listed tensors of one stored tensor, from its first use as a layer weight
        (through its DequantizeLinear node when ``quantised`` is one)."""
        shape = tuple(int(d) for d in tensor.dims)
        type_name = self._onnx.TensorProto.DataType.Name(tensor.data_type)
        dtype = DTYPES.get(type_name)
        if dtype is None:
            problem = f"ONNX {type_name} tensor, not read"
            return [Entry(TensorInfo(name, shape, "uint8", problem), tensor)]
        extra: dict[str, Any] = {}
        if quantised is not None:
            inputs = list(quantised.input) + ["", ""]
            axis = next((a.i for a in quantised.attribute if a.name == "axis"), 1)
            extra = {"scale": stored[inputs[1]], "zero_point": stored.get(inputs[2]), "axis": axis}
            dtype, uses = "float32", uses.get(quantised.output[0], [])
        else:
            uses = uses.get(name, [])
        for node, index in uses:
            op = node.op_type
            if op in _RECURRENT and index in (1, 2) and len(shape) == 3:
                leaf = "weight_ih" if index == 1 else "weight_hh"
                base = node.name or name
                return [
                    Entry(
                        TensorInfo(f"{base}.{leaf}_l0{'_reverse' * d}", shape[1:], dtype),
                        tensor,
                        direction=d,
                        **extra,
                    )
                    for d in range(shape[0])
                ]
            transpose = _transposed(node, index, len(shape))
            if transpose is not None:
                listed = _weight_name(name, node, taken)
                oriented = shape[::-1] if transpose else shape
                return [Entry(TensorInfo(listed, oriented, dtype), tensor, transpose, **extra)]
        return [Entry(TensorInfo(name, shape, dtype), tensor, **extra)]

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str) -> torch.Tensor:
        entry = self._entries_by_name[name]
        with reading(self.path, f"cannot read tensor {name!r}"):
            array = self._array(entry.tensor)
            if entry.scale is not None:
                array = self._dequantised(array, entry)
        if entry.info.dtype == "bfloat16":
            value = torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(
                torch.bfloat16
            )
        else:
            value = torch.from_numpy(np.array(array))
        if entry.direction is not None:
            value = value[entry.direction]
        return value.T.contiguous() if entry.transpose else value

    def notes(self) -> dict[str, Any]:
        count = sum(e.scale is not None for e in self._entries_by_name.values())
        if not count:
            return {}
        what = f"{count} weight{'s' * (count != 1)} dequantised to float32"
        return {"quantisation": f"ONNX DequantizeLinear; {what}"}

    def _array(self, tensor: Any) -> np.ndarray:
        """A stored tensor's values (external data read in)."""
        if tensor.data_location == self._onnx.TensorProto.EXTERNAL:
            tensor = self._external(tensor)
        return self._onnx.numpy_helper.to_array(tensor)

    def _dequantised(self, values: np.ndarray, entry: Entry) -> np.ndarray:
        """DequantizeLinear: ``(x - zero_point) * scale``, per tensor or along ``axis``."""
        along = [1] * values.ndim
        scale = self._array(entry.scale).astype(np.float32)
        if scale.size > 1:
            along[entry.axis] = -1
        zero = 0.0
        if entry.zero_point is not None:
            zero = self._array(entry.zero_point).astype(np.float32).reshape(along)
        return (values.astype(np.float32) - zero) * scale.reshape(along)

    def _external(self, tensor: Any) -> Any:
        """A copy of ``tensor`` with its external data read in (from inside the model's folder)."""
        where = {item.key: item.value for item in tensor.external_data}
        location = PurePath(where.get("location", ""))
        folder = self.path.resolve().parent
        target = (folder / location).resolve()
        if location.is_absolute() or ".." in location.parts or folder not in target.parents:
            raise InputError(
                self.path,
                f"tensor {tensor.name!r}: external data {str(location)!r} outside the model's folder",
            )
        copy = self._onnx.TensorProto()
        copy.CopyFrom(tensor)
        self._onnx.external_data_helper.load_external_data_for_tensor(copy, os.fspath(folder))
        return copy

    def close(self) -> None:
        self._entries_by_name = {}


def _walk(onnx: Any, graph: Any) -> tuple[dict[str, Any], dict[str, list]]:
    """Stored tensors (initializers, Constant values) and each tensor's uses ``(node, input)``,
    over the graph and its subgraphs, in graph order."""
    stored: dict[str, Any] = {}
    uses: dict[str, list] = {}
    graphs = [graph]
    while graphs:
        current = graphs.pop(0)
        for tensor in current.initializer:
            stored.setdefault(tensor.name, tensor)
        for node in current.node:
            for index, name in enumerate(node.input):
                if name:
                    uses.setdefault(name, []).append((node, index))
            for attribute in node.attribute:
                if node.op_type == "Constant" and attribute.name == "value" and node.output:
                    stored.setdefault(node.output[0], attribute.t)
                if attribute.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
    return stored, uses


def _dequantize_node(uses: list, stored: dict) -> Any:
    """The DequantizeLinear node that turns this stored tensor into weights, if one does.

    Its scale (and zero point) must be stored tensors; blocked quantisation
    (opset 21 ``block_size``) is not read.
    """
    for node, index in uses:
        inputs = list(node.input) + ["", ""]
        if node.op_type != "DequantizeLinear" or index != 0 or inputs[1] not in stored:
            continue
        if inputs[2] and inputs[2] not in stored:
            continue
        if not any(a.name == "block_size" and a.i for a in node.attribute):
            return node
    return None


def _transposed(node: Any, index: int, ndim: int) -> bool | None:
    """Whether the tensor at input ``index`` of ``node`` is a weight stored ``(in, out)``
    (True), ``(out, in, ...)`` (False), or not a layer weight there (None)."""
    op = node.op_type
    if (op, index) in _AS_IS and ndim >= 2:
        return False
    if op not in ("MatMul", "Gemm") or ndim != 2 or index > 1:
        return None
    flag = "transB" if index == 1 else "transA"
    transposed = any(a.name == flag and a.i == 1 for a in node.attribute)
    # y = x @ B: B is (in, out) unless Gemm's transB; y = A @ x: A is (out, in) unless transA
    return transposed == (index == 0)


def _weight_name(name: str, node: Any, taken: dict) -> str:
    """The stored name when it ends in ``weight``, else ``<node name>.weight`` when free."""
    if name.endswith("weight") or not node.name:
        return name
    listed = f"{node.name}.weight"
    return name if listed in taken else listed
