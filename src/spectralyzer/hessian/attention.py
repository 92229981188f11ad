"""Double backward through attention and custom functions: the backend, and the error it lacks.

Curvature products need the derivative of the gradient (double backward).
PyTorch's fused attention kernels (flash and memory-efficient, on CPU and
GPU), which ``torch.nn.functional.scaled_dot_product_attention`` picks by
default, have a first derivative but no second one; its math backend is the
same function written with ``matmul`` and ``softmax``, twice differentiable.
The backend is chosen when the forward pass runs, so :func:`math_attention`
must be active while a curvature operator BUILDS its graph (forward and
first backward with ``create_graph``); the products only walk that graph.

Whether the model called the function at all is seen by a torch function
mode (one Python check per torch call in that forward, nothing afterwards),
so the probe reports the substitution only when it happened.  A TorchScript
model bypasses function modes (the backend applies to it all the same): its
inlined graph is searched for the call instead.

An operation with no double backward still raises a ``RuntimeError`` in the
first product; :func:`no_double_backward` turns it into
:class:`NoDoubleBackward`, naming the operation (a custom function marked
``once_differentiable`` raises nothing: :func:`once_differentiable` finds it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

#: The note a probe shows when the model's attention ran on the math backend.
NOTE = (
    "attention: fused scaled_dot_product_attention replaced by the math backend for double backward"
)
_MISSING = re.compile(r"derivative for '?([^'\s]+)'? is not implemented")
_SDPA = torch.nn.functional.scaled_dot_product_attention


@dataclass
class AttentionUse:
    """Whether the forward pass called ``scaled_dot_product_attention``."""

    called: bool = False


class _SeeAttention(TorchFunctionMode):
    def __init__(self, use: AttentionUse) -> None:
        super().__init__()
        self._use = use

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is _SDPA:
            self._use.called = True
        return func(*args, **(kwargs or {}))


@contextmanager
def math_attention(model: torch.nn.Module) -> Iterator[AttentionUse]:
    """Attention on PyTorch's math backend (twice differentiable) while active; records its use."""
    scripted = isinstance(model, torch.jit.ScriptModule)  # its graph is there to read
    use = AttentionUse(scripted and "scaled_dot_product_attention" in str(model.inlined_graph))
    with sdpa_kernel(SDPBackend.MATH), _SeeAttention(use):
        yield use


class NoDoubleBackward(RuntimeError):
    """An operation of the model has no second derivative; ``operation`` names it."""

    def __init__(self, operation: str, kind: str = "the operation") -> None:
        self.operation = operation
        super().__init__(f"{kind} {operation} has no double backward")


def _nodes(roots: Sequence[Any]) -> Iterator[Any]:
    """Every autograd node below ``roots`` (``grad_fn`` objects, ``None`` skipped), once."""
    seen, stack = set(), list(roots)
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        stack.extend(child for child, _ in node.next_functions)


def once_differentiable(forward: Any, gradients: Sequence[torch.Tensor]) -> NoDoubleBackward | None:
    """The custom functions marked ``once_differentiable`` if the gradient's graph holds one.

    Such a function's backward ends in a ``DelayedError`` node whose inputs are
    detached copies, so ``torch.autograd.grad`` with respect to the parameters
    never runs it: no error, and the second derivative through it is silently
    zero.  Hence this look at the graph (one walk, when the operator is built).
    """
    delayed = ("Error", "DelayedError")  # the C++ class of DelayedError is Error
    if not any(type(n).__name__ in delayed for n in _nodes([g.grad_fn for g in gradients])):
        return None
    marked, custom = set(), set()
    for node in _nodes([forward]):
        cls = getattr(node, "_forward_cls", None)
        if cls is not None:
            custom.add(cls.__name__)
            code = getattr(cls.backward, "__code__", None)
            if code is not None and "once_differentiable" in code.co_qualname:
                marked.add(cls.__name__)
    names = ", ".join(sorted(marked or custom)) or "(unnamed)"
    return NoDoubleBackward(names, "the once_differentiable autograd.Function")


@contextmanager
def no_double_backward(blocked: NoDoubleBackward | None) -> Iterator[None]:
    """Raise :class:`NoDoubleBackward` for a missing second derivative in the block.

    ``blocked`` is what :func:`once_differentiable` found (raised at once);
    otherwise the aten operation comes from PyTorch's own error.
    """
    if blocked:
        raise NoDoubleBackward(blocked)
    try:
        yield
    except RuntimeError as err:
        found = _MISSING.search(str(err))
        if found:
            raise NoDoubleBackward(found.group(1)) from err
        raise
