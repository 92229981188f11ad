"""A probe's records -> text a practitioner reads (table, markdown) or a program reads (JSON).

JSON keys are the dataclass fields of :mod:`.probe` and :mod:`.batch_scaling`
(NaN and infinities written as ``null``); they are a stable interface.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import pandas as pd

from ..escaping import markdown as markdown_text
from ..escaping import terminal
from ..render import clean_json, markdown_table, text_cells
from .adam_state import AdamStability
from .probe import Curvature, ProbeResult

FORMATS = ("table", "json", "markdown")

EVAL_MODE = (
    "model in eval mode: dropout off, BatchNorm normalises with its running statistics "
    "(the Hessian of one fixed function of the weights)"
)


def _g(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}g}"


def _curvature_lines(c: Curvature) -> list[str]:
    name = {"hessian": "Hessian", "ggn": "Generalised Gauss-Newton (GGN)"}[c.matrix]
    lines = [
        f"{name}:",
        f"  top eigenvalues (Lanczos, {c.steps} steps, full re-orthogonalisation): "
        + ", ".join(_g(v, 6) for v in c.top_eigenvalues),
        f"  curvature along the gradient g'Mg/|g|^2: {_g(c.gradient_curvature)}",
    ]
    if c.trace:
        lines.append(
            f"  trace (Hutch++, {c.trace.samples} products): {_g(c.trace.value, 6)} "
            f"+- {_g(c.trace.stderr, 2)} (standard error); effective rank tr/lambda_1: "
            f"{_g(c.effective_rank)}"
        )
    if c.density:
        d = c.density
        lines.append(
            f"  density (SLQ, {d.vectors} vectors x {d.steps} steps): Ritz values in "
            f"[{_g(d.min_node)}, {_g(d.max_node)}]; negative mass {d.negative_mass:.1%}, "
            f"near zero {d.near_zero_mass:.1%}; mean {_g(d.mean)} (estimates tr/P)"
        )
    return lines


def scaling_frame(result: ProbeResult) -> pd.DataFrame:
    return pd.DataFrame([asdict(r) for r in result.scaling.rows]) if result.scaling else None


def _scaling_lines(result: ProbeResult) -> list[str]:
    s = result.scaling
    v = s.noise
    n = s.batch
    population = "infinite" if math.isinf(s.dataset_size) else f"{s.dataset_size:g}"
    deconvolved = (
        f"lambda_1 without batch noise: {_g(s.lambda_1, 6)} (deconvolved from lambda_1 of the "
        f"{n}-sample batch, {_g(s.lambda_1_batch, 6)})"
        if s.separated
        else f"lambda_1 of the {n}-sample batch ({_g(s.lambda_1_batch, 6)}) does not stand clear "
        "of its own noise: used as is, an upper bound"
    )
    return [
        "Batch size (Granziol et al. 2022, Theorem 4 and Algorithm 1; second-order perturbation "
        "along the top eigenvector):",
        f"  noise at micro-batch b = {v.micro_batch} ({v.micro_batches} micro-batches): "
        f"V_H (random directions, {v.vectors} vectors) = {_g(v.bulk)} +- {_g(v.bulk_stderr, 2)}; "
        f"along the top eigenvector V_perp = {_g(v.perp)}, V_par = {_g(v.par)}",
        f"  per sample: S_H^2 = {_g(v.per_sample_bulk)}, S_perp^2 = {_g(v.per_sample_perp)}, "
        f"S_par^2 = {_g(v.per_sample_par)}",
        f"  {deconvolved}",
        f"  linear scaling of the SGD learning rate stops paying at B* = S_perp^2/lambda_1^2 = "
        f"{_g(s.critical_batch)}; data set size {population}; factors relative to B = "
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


def epoch_noise_frame(result: ProbeResult) -> pd.DataFrame:
    frame = pd.DataFrame([asdict(r) for r in result.epoch_noise])
    return frame.rename(columns={"top_k_above": f"top_{result.options.top_k}_above"})


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


def _guidance_lines(result: ProbeResult, clean: Callable[[str], str] = terminal) -> list[str]:
    g = result.guidance
    lines = [
        f"Step sizes at the probed batch size ({g.batch_size}; from the Hessian's lambda_1 = "
        f"{_g(g.lambda_1, 6)}):",
        f"  largest stable SGD learning rate 2/lambda_1: {_g(g.gd_limit)}; with heavy-ball "
        f"momentum {g.momentum}: {_g(g.heavy_ball_limit)}; with PyTorch Nesterov momentum "
        f"{g.momentum}: {_g(g.nesterov_limit)}",
        f"  step along the gradient minimising the quadratic model |g|^2/g'Hg: "
        f"{_g(g.gradient_step)}",
    ]
    if g.heavy_ball:
        lines += [
            f"  curvature range [{_g(g.lambda_low)}, {_g(g.lambda_1)}], low end = "
            f"{g.lambda_low_source}:",
            f"    heavy ball: lr {_g(g.heavy_ball[0])}, momentum {_g(g.heavy_ball[1])}; "
            f"Nesterov: lr {_g(g.nesterov[0])}, momentum {_g(g.nesterov[1])}",
        ]
    else:
        lines.append(
            f"  no momentum rule: the low end ({g.lambda_low_source}) = {_g(g.lambda_low)} "
            "is not positive and below lambda_1"
        )
    if result.adam:
        lines += _adam_lines(result.adam, clean)
    return lines


def _adam_lines(a: AdamStability, clean: Callable[[str], str] = terminal) -> list[str]:
    """Adam's limit; ``clean`` escapes the parameter name (it comes from the model)."""
    head = f"  Adam (from its optimizer state at step {a.steps}, beta1 {a.beta1}): "
    if math.isnan(a.lr):  # parameter groups with different learning rates
        return [
            head + f"lambda_1 of D H D with D^2 = lr/P: {_g(a.scaled_sharpness)}, stable below "
            f"{_g(a.threshold)}: every learning rate can be scaled by up to {_g(a.headroom)}",
            f"    its eigenvector lies {a.top_share:.0%} in {clean(a.top_parameter)}",
        ]
    where = f"    its eigenvector lies {a.top_share:.0%} in {clean(a.top_parameter)}"
    return [
        head + f"lambda_1 of the preconditioned Hessian P^-1/2 H P^-1/2 = "
        f"{_g(a.lambda_1_preconditioned)}",
        f"    stable while lr < (2 + 2 beta1) / ((1 - beta1) lambda_1) = {_g(a.lr_limit)}; "
        f"the optimizer's lr {_g(a.lr)} is {_g(1 / a.headroom, 3)} times that limit",
        where,
    ]


def _header(result: ProbeResult, clean: Callable[[str], str] = terminal) -> list[str]:
    o = result.options
    return [
        f"spectralyzer probe: {clean(result.model)} on {clean(result.data)}",
        f"{result.samples} samples, {result.parameters:,} parameters, {o.loss} loss "
        f"{_g(result.loss, 6)}, gradient norm {_g(result.gradient_norm)}; {o.precision} on "
        f"{result.device}, seed {o.seed}",
        EVAL_MODE,
    ]


def to_text(result: ProbeResult, markdown: bool = False) -> str:
    """The report for people; parameter names and labels escaped for the terminal or Markdown."""
    clean = markdown_text if markdown else terminal

    def table(frame: pd.DataFrame) -> str:
        frame = frame.copy()
        for column in frame.columns:  # 4 significant digits: curvatures span decades
            if frame[column].dtype.kind == "f":
                frame[column] = frame[column].map(_g)
        if markdown:
            return markdown_table(frame)
        return text_cells(frame, terminal).to_string(index=False)

    blocks = [_header(result, clean)]
    blocks += [_curvature_lines(c) for c in result.curvatures]
    blocks.append(_guidance_lines(result, clean))
    if result.scaling:
        blocks.append(_scaling_lines(result) + ["", table(scaling_frame(result))])
    if result.epoch_noise:
        blocks.append(_epoch_noise_lines(result) + ["", table(epoch_noise_frame(result))])
    if result.layers is not None:
        blocks.append(
            ["Per layer: Hessian block of each weight matrix beside its weight spectrum", ""]
            + [table(result.layers)]
        )
    blocks.append(["Assumptions:"] + [f"- {a}" for a in assumptions(result)])
    if markdown:
        title, *rest = blocks[0]
        blocks[0] = [f"# {title}", "", *rest]
    return "\n\n".join("\n".join(b) for b in blocks) + "\n"


def to_dict(result: ProbeResult) -> dict[str, Any]:
    """Everything, as plain data; the layer table as a list of records."""
    out = {
        "model": result.model,
        "data": result.data,
        "samples": result.samples,
        "parameters": result.parameters,
        "loss_name": result.loss_name,
        "loss": result.loss,
        "gradient_norm": result.gradient_norm,
        "device": result.device,
        "options": asdict(result.options),
        "eval_mode": EVAL_MODE,
        "curvatures": {
            c.matrix: {**asdict(c), "lambda_1": c.lambda_1, "effective_rank": c.effective_rank}
            for c in result.curvatures
        },
        "guidance": asdict(result.guidance),
        "batch_scaling": asdict(result.scaling) if result.scaling else None,
        "layers": result.layers.to_dict(orient="records") if result.layers is not None else None,
        "adam": asdict(result.adam) if result.adam else None,
        "epoch_noise": [asdict(r) for r in result.epoch_noise] if result.epoch_noise else None,
        "assumptions": assumptions(result),
        "timings": result.timings,
    }
    return clean_json(out)


def render_probe(fmt: str, result: ProbeResult) -> str:
    if fmt == "json":
        return json.dumps(to_dict(result), indent=2) + "\n"
    if fmt in ("table", "markdown"):
        return to_text(result, markdown=fmt == "markdown")
    raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
