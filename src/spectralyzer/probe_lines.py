"""The probe's summary for people: plain lines, in sections (escaping is the renderer's job).

Each :class:`Section` may name the table (of ``ProbeResult.tables()``) that
belongs under it, so that a renderer can keep a table next to its explanation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .hessian.adam_state import AdamStability
    from .probe_records import Curvature, ProbeResult

EVAL_MODE = (
    "model in eval mode: dropout off, BatchNorm normalises with its running statistics "
    "(the Hessian of one fixed function of the weights)"
)


@dataclass(frozen=True)
class Section:
    """Lines of the summary, and the name of the table that goes under them (if any)."""

    lines: list[str]
    table: str | None = None


def sections(result: ProbeResult) -> list[Section]:
    """The summary of a probe, section by section, in reading order."""
    out = [Section(_header(result))]
    out += [Section(_curvature_lines(c)) for c in result.curvatures]
    out.append(Section(_guidance_lines(result)))
    if result.scaling:
        out.append(Section(_scaling_lines(result), "batch_sizes"))
    if result.epoch_noise:
        out.append(Section(_epoch_noise_lines(result), "epoch_noise"))
    if result.layers is not None:
        heading = "Per layer: Hessian block of each weight matrix beside its weight spectrum"
        out.append(Section([heading], "layers"))
    out.append(Section(["Assumptions:"] + [f"- {a}" for a in assumptions(result)]))
    return out


def number(x: float | None, digits: int = 4) -> str:
    """``digits`` significant digits (curvatures span decades); NaN and None as ``n/a``."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}g}"


def _curvature_lines(c: Curvature) -> list[str]:
    name = {"hessian": "Hessian", "ggn": "Generalised Gauss-Newton (GGN)"}[c.matrix]
    lines = [
        f"{name}:",
        f"  top eigenvalues (Lanczos, {c.steps} steps, full re-orthogonalisation): "
        + ", ".join(number(v, 6) for v in c.top_eigenvalues),
        f"  curvature along the gradient g'Mg/|g|^2: {number(c.gradient_curvature)}",
    ]
    if c.trace:
        lines.append(
            f"  trace (Hutch++, {c.trace.samples} products): {number(c.trace.value, 6)} "
            f"+- {number(c.trace.stderr, 2)} (standard error); effective rank tr/lambda_1: "
            f"{number(c.effective_rank)}"
        )
    if c.density:
        d = c.density
        lines.append(
            f"  density (SLQ, {d.vectors} vectors x {d.steps} steps): Ritz values in "
            f"[{number(d.min_node)}, {number(d.max_node)}]; negative mass {d.negative_mass:.1%}, "
            f"near zero {d.near_zero_mass:.1%}; mean {number(d.mean)} (estimates tr/P)"
        )
    return lines


def _scaling_lines(result: ProbeResult) -> list[str]:
    s = result.scaling
    v = s.noise
    n = s.batch
    population = "infinite" if math.isinf(s.dataset_size) else f"{s.dataset_size:g}"
    deconvolved = (
        f"lambda_1 without batch noise: {number(s.lambda_1, 6)} (deconvolved from lambda_1 of the "
        f"{n}-sample batch, {number(s.lambda_1_batch, 6)})"
        if s.separated
        else f"lambda_1 of the {n}-sample batch ({number(s.lambda_1_batch, 6)}) does not stand clear "
        "of its own noise: used as is, an upper bound"
    )
    return [
        "Batch size (Granziol et al. 2022, Theorem 4 and Algorithm 1; second-order perturbation "
        "along the top eigenvector):",
        f"  noise at micro-batch b = {v.micro_batch} ({v.micro_batches} micro-batches): "
        f"V_H (random directions, {v.vectors} vectors) = {number(v.bulk)} +- {number(v.bulk_stderr, 2)}; "
        f"along the top eigenvector V_perp = {number(v.perp)}, V_par = {number(v.par)}",
        f"  per sample: S_H^2 = {number(v.per_sample_bulk)}, S_perp^2 = {number(v.per_sample_perp)}, "
        f"S_par^2 = {number(v.per_sample_par)}",
        f"  {deconvolved}",
        f"  linear scaling of the SGD learning rate stops paying at B* = S_perp^2/lambda_1^2 = "
        f"{number(s.critical_batch)}; data set size {population}; factors relative to B = "
        f"{s.reference_batch}",
    ]


def _epoch_noise_lines(result: ProbeResult) -> list[str]:
    o = result.options
    return [
        f"Epoch-based SGD noise (Kuehn & Rosenow 2025; lr {o.lr:g}, momentum {o.momentum}, "
        f"N = {o.dataset_size:g}): each sample once per epoch makes the noise anti-correlated. "
        "Along Hessian eigenvalues above lambda_cross = 3 (1 - beta) S / (lr N) that does not "
        "matter (correlation time (1 + beta)/(lr lambda)); below it the correlation time is "
        "capped at tau_SGD = (N/S)/3 (1 + beta)/(1 - beta).",
    ]


ASSUMPTIONS = [
    "The Hessian is of the mean loss on the given batch, at the given weights; the learning "
    "rates hold near these weights (a quadratic model), not for the whole run.",
    "Batch noise H_B - H has variance S^2 (1/B - 1/N) along a fixed direction (independent "
    "samples, drawn without replacement from N). The top eigenvalue moves by V_perp(B)/lambda_1 "
    "(second-order perturbation, other eigenvalues small against lambda_1; Theorem 4 of "
    "Granziol et al. for isotropic noise) and spreads by sqrt(V_par(B)); the noise bulk reaches "
    "2 sqrt(V_H(B)) and swallows the outlier when lambda_1 < sqrt(V_H(B)).",
    "measured_lambda_1 (mean and spread over random sub-batches of the probed samples, Lanczos) "
    "against predicted_lambda_1 and predicted_spread (the same with N = n): their agreement "
    "checks the noise model on this model and batch.",
    "training_lambda_1 and sgd_lr_max = 2/lambda_1(B): a mini-batch of B from a data set of "
    "size N; sgd_factor is the curvature-limited change of the SGD learning rate relative to "
    "the reference batch, linear_factor the linear rule (valid below B*), adam_factor the "
    "square-root rule for Adam with a small epsilon (Granziol et al. section 11).",
    "Momentum rules: textbook heavy-ball (Polyak) and Nesterov optima for curvatures in "
    "[lambda_low, lambda_1] (Granziol et al. eqs. 24-25 print them in another normalisation); "
    "deep-net Hessians have near-zero and negative eigenvalues, so the low end is a Ritz value "
    "of the top of the spectrum, not the smallest eigenvalue.",
]


ADAM_ASSUMPTION = (
    "Adam: P = sqrt(v_hat) + eps from the saved second moments, frozen; on the quadratic model "
    "Adam is then heavy-ball momentum on P^-1/2 H P^-1/2, stable while lr lambda_1 < "
    "(2 + 2 beta1)/(1 - beta1) (Cohen et al. 2022); the bias correction of the first moment "
    "(1 - beta1^t, near 1 late in training) is left out; parameters are matched to the "
    "optimizer's entries in model.parameters() order. Where the second moment is near zero "
    "(P ~ eps: no gradient in training, e.g. a bias just before BatchNorm, or a dead unit) the "
    "frozen-P model does not hold: Adam's step there stays near lr (1 - beta1)/sqrt(1 - beta2) "
    "as v adapts; when the eigenvector lies in such a parameter, the limit is not a warning."
)


def assumptions(result: ProbeResult) -> list[str]:
    """The assumptions behind the numbers of this result."""
    return ASSUMPTIONS + ([ADAM_ASSUMPTION] if result.adam else [])


def _guidance_lines(result: ProbeResult) -> list[str]:
    g = result.guidance
    lines = [
        f"Step sizes at the probed batch size ({g.batch_size}; from the Hessian's lambda_1 = "
        f"{number(g.lambda_1, 6)}):",
        f"  largest stable SGD learning rate 2/lambda_1: {number(g.gd_limit)}; with heavy-ball "
        f"momentum {g.momentum}: {number(g.heavy_ball_limit)}; with PyTorch Nesterov momentum "
        f"{g.momentum}: {number(g.nesterov_limit)}",
        f"  step along the gradient minimising the quadratic model |g|^2/g'Hg: "
        f"{number(g.gradient_step)}",
    ]
    if g.heavy_ball:
        lines += [
            f"  curvature range [{number(g.lambda_low)}, {number(g.lambda_1)}], low end = "
            f"{g.lambda_low_source}:",
            f"    heavy ball: lr {number(g.heavy_ball[0])}, momentum {number(g.heavy_ball[1])}; "
            f"Nesterov: lr {number(g.nesterov[0])}, momentum {number(g.nesterov[1])}",
        ]
    else:
        lines.append(
            f"  no momentum rule: the low end ({g.lambda_low_source}) = {number(g.lambda_low)} "
            "is not positive and below lambda_1"
        )
    if result.adam:
        lines += _adam_lines(result.adam)
    return lines


def _adam_lines(a: AdamStability) -> list[str]:
    """Adam's limit and where its eigenvector lies (the parameter name comes from the model)."""
    head = f"  Adam (from its optimizer state at step {a.steps}, beta1 {a.beta1}): "
    if math.isnan(a.lr):  # parameter groups with different learning rates
        return [
            head + f"lambda_1 of D H D with D^2 = lr/P: {number(a.scaled_sharpness)}, stable below "
            f"{number(a.threshold)}: every learning rate can be scaled by up to {number(a.headroom)}",
            f"    its eigenvector lies {a.top_share:.0%} in {a.top_parameter}",
        ]
    where = f"    its eigenvector lies {a.top_share:.0%} in {a.top_parameter}"
    return [
        head + f"lambda_1 of the preconditioned Hessian P^-1/2 H P^-1/2 = "
        f"{number(a.lambda_1_preconditioned)}",
        f"    stable while lr < (2 + 2 beta1) / ((1 - beta1) lambda_1) = {number(a.lr_limit)}; "
        f"the optimizer's lr {number(a.lr)} is {number(1 / a.headroom, 3)} times that limit",
        where,
    ]


def _header(result: ProbeResult) -> list[str]:
    o = result.options
    return [
        f"spectralyzer probe: {result.model} on {result.data}",
        f"{result.samples} samples, {result.parameters:,} parameters, {o.loss} loss "
        f"{number(result.loss, 6)}, gradient norm {number(result.gradient_norm)}; {o.precision} on "
        f"{result.device}, seed {o.seed}",
        EVAL_MODE,
        *([result.attention] if result.attention else []),
        *_product_lines(result),
    ]


def _product_lines(result: ProbeResult) -> list[str]:
    """How the curvature products were computed, and the memory they were planned in."""
    o = result.options
    lines = [result.memory.line()] if result.memory else []
    if o.hvp == "finite-difference":
        lines.append(
            "Hessian products by central differences of gradients (step (eps |w| s^2)^(1/3), "
            "s = min(|w|, |loss|/|g|)): relative error about (eps |w| / s)^(2/3)"
        )
    if o.lanczos_basis == "disk":
        lines.append(f"Lanczos basis stored in a temporary file, in {o.precision}")
    elif o.lanczos_basis != "full":
        lines.append(f"Lanczos basis stored in {o.lanczos_basis} (products in {o.precision})")
    return lines
