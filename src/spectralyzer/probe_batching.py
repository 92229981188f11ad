"""How the probe builds its curvature operators, and the memory each of its probes needs.

An operator is the Hessian (exact, by double backward, or by central
differences of gradients) or the GGN of the loss on some samples.  When the
samples are more than ``hvp_batch``, its products are accumulated over
micro-batches of ``hvp_batch`` (:class:`.hessian.microbatch.MicroBatched`), so
only one micro-batch's graph is alive at a time (docs/theory.md section 4.13).

Memory (docs/theory.md section 4.14), in bytes, for ``P`` parameters of ``b``
bytes and a Lanczos basis of ``c`` bytes per number in memory
(``--lanczos-basis``: ``b``, 4 for float32, 2 for bfloat16, 0 on disk, where
it takes ``steps P b`` of the temporary folder instead):

* vectors, always: ``7 P b`` (parameters, gradient, work vectors, the top
  Ritz vector), ``+ 3 P b`` with ``--hvp finite-difference``;
* one probe at a time, the largest of: Lanczos ``steps P c``; SLQ
  ``slq_steps P c``; Hutch++ ``3 (trace_matvecs // 3) P b``; Adam's
  preconditioned Lanczos ``steps P c + 2 P b``; the batch-size table
  ``max(steps P c, 2 (variance_vectors + 1) P 8)``; per layer, the largest
  block's ``layer_steps P_l c + 3 (layer_trace_matvecs // 3) P_l b``;
* the graph of one micro-batch of ``m`` samples, ``fixed + per_sample m``,
  measured on 1 and 2 samples (:func:`.hessian.microbatch.graph_size`).

The default ``hvp_batch`` is the largest ``m`` whose graph fits
``--memory-budget`` less the two other terms, or :data:`GRAPH_BUDGET` without
a budget; with a budget the probe refuses (before any product) when the sum
exceeds it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import InputError, OptionError
from .hessian.finite_difference import FiniteDifferenceHessian
from .hessian.ggn import GGNOperator
from .hessian.microbatch import MicroBatched, graph_size
from .hessian.operator import HessianOperator, LossFn
from .probe_records import BASIS_DTYPES, ProbeOptions, first_line

#: The graph of one micro-batch is kept within this when no --memory-budget is given.
GRAPH_BUDGET = 2**30
#: What a model raises when the batch does not fit it (shapes, dtypes, label range).
BATCH_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)


def size_text(nbytes: float) -> str:
    """``1.5 GiB``, ``300 MiB``: bytes for people (binary units)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{int(nbytes)} B"


@dataclass(frozen=True)
class MemoryPlan:
    """The probe's memory formula evaluated for this model and batch, and the micro-batch chosen."""

    parameters: int
    hvp_batch: int
    micro_batches: int
    graph_fixed: int
    graph_per_sample: int
    terms: dict[str, int] = field(default_factory=dict)  # bytes of each term
    total: int = 0
    budget: int | None = None

    def line(self) -> str:
        """One line for the summary: the micro-batching and the estimated peak."""
        parts = ", ".join(f"{k} {size_text(v)}" for k, v in self.terms.items() if v)
        within = f" (budget {size_text(self.budget)})" if self.budget else ""
        return (
            f"memory: curvature products over {self.micro_batches} micro-batch(es) of "
            f"{self.hvp_batch}; estimated peak {size_text(self.total)}{within}: {parts}"
        )


def probe_terms(
    options: ProbeOptions, parameters: int, itemsize: int, blocks: list[int], adam: bool
) -> dict[str, int]:
    """Bytes of each probe that may run (module docstring); ``blocks``: per-layer block sizes."""
    p, b = parameters, itemsize
    storage = BASIS_DTYPES[options.lanczos_basis]
    c = storage.itemsize if isinstance(storage, torch.dtype) else 0 if storage == "disk" else b
    terms = {"lanczos": options.steps * p * c}
    if options.slq:
        terms["slq"] = options.slq_steps * p * c
    if options.trace:
        terms["trace"] = 3 * (options.trace_matvecs // 3) * p * b
    if adam:
        terms["adam"] = options.steps * p * c + 2 * p * b
    if options.batch_sizes:
        terms["batch_sizes"] = max(
            options.steps * p * c, 2 * (options.variance_vectors + 1) * p * 8
        )
    if options.per_layer and blocks:
        per_block = options.layer_steps * c + 3 * (options.layer_trace_matvecs // 3) * b
        terms["per_layer"] = max(blocks) * per_block
    return terms


def vector_bytes(options: ProbeOptions, parameters: int, itemsize: int) -> int:
    """Parameters, gradient, work and Ritz vectors (and the finite-difference copies)."""
    count = 7 + (3 if options.hvp == "finite-difference" else 0)
    return count * parameters * itemsize


@contextlib.contextmanager
def user_forward(loss: str, model_label: str, data_label: str) -> Iterator[None]:
    """The user's forward pass runs here: its failures are the model's (InputError), not ours."""
    try:
        yield
    except BATCH_ERRORS as err:
        problem = f"the model cannot compute the {loss} loss on this batch ({first_line(err)})"
        raise InputError(data_label, problem) from err
    except SystemExit as err:
        raise InputError(model_label, f"the model exited (SystemExit {err.code})") from err
    except Exception as err:  # AssertionError, KeyError, ...: the boundary to user code
        raise InputError(
            model_label, f"the model raised {first_line(err)} on {data_label}"
        ) from err


@dataclass
class Operators:
    """Builds the probe's operators on (a subset of) the batch, micro-batched by ``hvp_batch``."""

    model: nn.Module
    loss_fn: LossFn
    inputs: torch.Tensor
    targets: torch.Tensor
    options: ProbeOptions
    hvp_batch: int
    labels: tuple[str, str] = ("<module>", "<batch>")  # model, data

    def build(
        self, matrix: str = "hessian", idx: torch.Tensor | None = None, params: Any = None
    ) -> Any:
        """The ``matrix`` ("hessian" or "ggn") of the samples ``idx`` (all by default)."""
        x, y = (self.inputs, self.targets) if idx is None else (self.inputs[idx], self.targets[idx])
        size = self.hvp_batch
        with user_forward(self.options.loss, *self.labels):
            if matrix == "hessian" and self.options.hvp == "finite-difference":
                return FiniteDifferenceHessian(self.model, self.loss_fn, x, y, params, size)
            kind = HessianOperator if matrix == "hessian" else GGNOperator
            if len(x) <= size:  # the graph of the whole batch is kept: cheaper products
                return kind(self.model, self.loss_fn, x, y, params)
            return MicroBatched(
                lambda part: kind(self.model, self.loss_fn, x[part], y[part], params), len(x), size
            )


def weight_blocks(model: nn.Module) -> list[int]:
    """Sizes of the parameters with at least two dimensions (the per-layer blocks)."""
    return [p.numel() for p in model.parameters() if p.dim() >= 2]


def plan_memory(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    options: ProbeOptions,
    *,
    adam: bool = False,
    labels: tuple[str, str] = ("<module>", "<batch>"),
) -> MemoryPlan:
    """``hvp_batch`` and the memory formula for this model and batch; refuses over the budget.

    The graph is measured by two forward and backward passes on 1 and 2 samples.
    """
    n = len(inputs)
    if not list(model.parameters()):
        raise InputError(labels[0], "the model has no parameters: there is no curvature to probe")
    parameters = sum(p.numel() for p in model.parameters())
    itemsize = next(model.parameters()).element_size()
    terms = probe_terms(options, parameters, itemsize, weight_blocks(model), adam)
    fixed = vector_bytes(options, parameters, itemsize) + max(terms.values())
    with user_forward(options.loss, *labels):
        graph = graph_size(model, loss_fn, inputs, targets, options.hvp == "exact")
    if options.hvp_batch is not None:
        hvp_batch = min(options.hvp_batch, n)
    else:
        room = (options.memory_budget - fixed) if options.memory_budget else GRAPH_BUDGET
        hvp_batch = min(max(graph.samples_within(room), 1), n)
    terms = {"vectors": vector_bytes(options, parameters, itemsize), **terms}
    terms["graph"] = graph.of(hvp_batch)
    total = fixed + terms["graph"]
    plan = MemoryPlan(
        parameters=parameters,
        hvp_batch=hvp_batch,
        micro_batches=-(-n // hvp_batch),
        graph_fixed=graph.fixed,
        graph_per_sample=graph.per_sample,
        terms=terms,
        total=total,
        budget=options.memory_budget,
    )
    if options.memory_budget is not None and total > options.memory_budget:
        raise OptionError(
            "memory_budget",
            f"the probe needs about {size_text(total)}, more than {size_text(options.memory_budget)} "
            f"({', '.join(f'{k} {size_text(v)}' for k, v in terms.items() if v)}); lower --steps, "
            "--hvp-batch or the precision, or use --lanczos-basis float32/bfloat16",
        )
    return plan
