"""The names an option may take, in one light module (no torch, pandas or numpy).

The command line builds its option choices from these before anything heavy is
imported, so ``spectralyzer --help`` and usage errors stay fast (issue 14); the
library checks its records against the same tuples, so there is one source.
"""

from __future__ import annotations

#: Layer types :mod:`spectralyzer.layers` recognises (``--types``).
LAYER_TYPES = (
    "linear",
    "gpt2-conv1d",
    "embedding",
    "lstm",
    "gru",
    "rnn",
    "conv1d",
    "conv2d",
    "conv3d",
    "lora",
)
#: How a convolution becomes matrices (``--conv-mode``).
CONV_MODES = ("slices", "unfold")
#: What becomes of expert matrices (``--expert-rows``): a row each, one row per group, left out.
EXPERT_MODES = ("each", "mean", "skip")
#: Where the spectra are computed (``--device``).
DEVICES = ("auto", "cpu", "cuda")
#: Named alpha estimators (``--estimator``), docs/theory.md section 6.1.
ESTIMATORS = ("clauset", "hill", "xmin-peak")
#: Output formats of every result (``--format``).
FORMATS = ("table", "csv", "json", "markdown")
#: Model means that can rank a series (``compare --rank-by``).
RANK_METRICS = ("alpha", "alpha_weighted", "log_norm", "log_spectral_norm", "log_alpha_norm")
#: Losses of the probe (``probe --loss``); :data:`spectralyzer.probe_records.LOSSES` maps them.
LOSS_NAMES = ("cross_entropy", "mse")
#: Precisions of the probe (``probe --precision``).
PRECISION_NAMES = ("float64", "float32")
#: What ``allocate --for`` sets per layer (:mod:`spectralyzer.allocation`).
ALLOCATIONS = ("sparsity", "lr", "weight-decay", "bits", "lora-experts")
#: How the probe computes Hessian-vector products (``probe --hvp``).
HVP_NAMES = ("exact", "finite-difference")
#: Storage of the probe's Lanczos basis (``probe --lanczos-basis``): the probe's precision, a
#: lower one, or a temporary file.
BASIS_NAMES = ("full", "float32", "bfloat16", "disk")
