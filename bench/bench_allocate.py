"""Does allocating by alpha help? Prune and quantise the repository's trained models.  A bench,
not a test: deterministic, CPU, prints a table.

    python bench/bench_allocate.py [MODEL ...]   # tiny-gpt, digits-cnn, mlp (default: all)

The digits test set needs scikit-learn (``pip install -e '.[train]'``).

Models (all trained by scripts in data/, test data regenerated the same way):

- ``tiny-gpt``: data/tiny_gpt (data/train_tiny_gpt.py), held-out byte perplexity on
  the held-out standard-library files; the linear layers inside the blocks are pruned
  (AlphaPruning's set: embeddings and head are kept).
- ``digits-cnn``: data/digits/cnn.safetensors, accuracy on its 500 test images
  (data/train_digits.py's seeded split; scikit-learn's digits).
- ``mlp-epoch-NN``: data/mlp/epoch_NN.safetensors, accuracy on its 1000 test points
  (data/train_mlp.py's teacher task).

Pruning: magnitude within each layer (the smallest |w| set to zero), to a
parameter-weighted mean sparsity of 50%, 70% and 80%: ``uniform`` prunes every layer to
the target, ``alpha`` to ``spectralyzer.allocate(..., "sparsity", S)`` with the published
defaults (eps 0.3, block-wise; ``alpha layer-wise`` the paper's other mode) and ``clip_max=0.99`` (the published mapping can ask for
more than 100% of a small layer; the bench prints how many ratios were held).

Bits: symmetric round-to-nearest per output channel (scale = max |w| of the row /
(2^(b-1) - 1)); ``uniform`` at 3 bits everywhere, ``alpha`` at
``allocate(..., "bits", 3.0)`` (mean bits <= 3, printed). The same layers as pruning.

Nothing here is tuned: the hyper-parameters are the papers' defaults, and the test
splits are used only for the figures printed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "data")]

import spectralyzer  # noqa: E402
from spectralyzer.pipeline import make_options  # noqa: E402

SPARSITIES = (0.5, 0.7, 0.8)
MEAN_BITS = 3.0
CLIP = 0.99


# --- the edits


def magnitude_prune(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """``weight`` with its ``round(ratio * numel)`` smallest magnitudes set to zero."""
    k = int(round(float(ratio) * weight.numel()))
    if k <= 0:
        return weight.clone()
    flat = weight.abs().flatten()
    cut = torch.topk(flat, k, largest=False).indices
    pruned = weight.clone().flatten()
    pruned[cut] = 0
    return pruned.view_as(weight)


def quantise_rows(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric round-to-nearest with one scale per output channel (row)."""
    rows = weight.reshape(weight.shape[0], -1)
    levels = 2 ** (int(bits) - 1) - 1
    scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / levels
    return (torch.round(rows / scale).clamp(-levels, levels) * scale).view_as(weight)


def edited(state: dict, values: dict, edit: Callable) -> dict:
    return {k: edit(v, values[k]) if k in values else v for k, v in state.items()}


# --- the models and their scores


def tiny_gpt():
    import train_tiny_gpt as tg

    path = ROOT / "data" / "tiny_gpt" / "model.safetensors"
    _, held = tg.source_files()
    windows = tg.eval_windows(tg.byte_stream(held))

    def score(state: dict) -> float:
        model = tg.TinyGPT()
        model.load_state_dict(state)
        return tg.perplexity(model, windows)

    return path, score, r"^model\.layers\.", "perplexity"


def digits_cnn():
    import train_digits as td

    from spectralyzer.demo_nets import digits_cnn as factory

    path = ROOT / "data" / "digits" / "cnn.safetensors"
    _, _, x_test, y_test = td.make_data(torch.Generator().manual_seed(td.SEED))

    def score(state: dict) -> float:
        model = factory()
        model.load_state_dict(state)
        return td.accuracy(model, x_test, y_test)

    return path, score, None, "accuracy"


def mlp(epoch: int):
    import train_mlp as tm

    path = ROOT / "data" / "mlp" / f"epoch_{epoch:02d}.safetensors"
    _, _, x_test, y_test = tm.make_data(torch.Generator().manual_seed(0))

    def score(state: dict) -> float:
        model = nn.Sequential(
            nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )
        model.load_state_dict(state)
        with torch.no_grad():
            return (model(x_test).argmax(1) == y_test).float().mean().item()

    return path, score, None, "accuracy"


def run(label: str, path: Path, score: Callable, layers: str | None, unit: str) -> list[str]:
    state = load_file(path)
    options = make_options(layers=layers, device="cpu")
    rows = [f"{label:14s} {unit:10s} dense {score(state):8.4f}"]
    for target in SPARSITIES:
        result = spectralyzer.allocate(path, "sparsity", target, options=options, clip_max=CLIP)
        ratios = result.mapping()
        per_layer = spectralyzer.allocate(
            path, "sparsity", target, options=options, clip_max=CLIP, block_wise=False
        ).mapping()
        uniform = score(edited(state, dict.fromkeys(ratios, target), magnitude_prune))
        alpha = score(edited(state, ratios, magnitude_prune))
        layer_wise = score(edited(state, per_layer, magnitude_prune))
        c = result.summary["constraint"]
        rows.append(
            f"{label:14s} {unit:10s} prune {target:.0%}: uniform {uniform:8.4f}  alpha {alpha:8.4f}"
            f"  alpha layer-wise {layer_wise:8.4f}  (block-wise ratios {c['range'][0]:.3f}.."
            f"{c['range'][1]:.3f}, held at {CLIP}: {c['clipped']}, "
            f"estimator {result.summary['estimator']})"
        )
    result = spectralyzer.allocate(path, "bits", MEAN_BITS, options=options)
    bits = result.mapping()
    uniform = score(edited(state, dict.fromkeys(bits, int(MEAN_BITS)), quantise_rows))
    alpha = score(edited(state, bits, quantise_rows))
    mean = result.summary["constraint"]["weighted_mean_bits"]
    rows.append(
        f"{label:14s} {unit:10s} bits {MEAN_BITS:g}: uniform {uniform:8.4f}  alpha {alpha:8.4f}"
        f"  (alpha's mean bits {mean:.3f}, {result.summary['constraint']['layers_per_bits']})"
    )
    return rows


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    wanted = set(sys.argv[1:]) or {"tiny-gpt", "digits-cnn", "mlp"}
    models = [("tiny-gpt", tiny_gpt)] if "tiny-gpt" in wanted else []
    if "digits-cnn" in wanted:
        try:
            import sklearn  # noqa: F401

            models.append(("digits-cnn", digits_cnn))
        except ImportError:
            print("digits-cnn: skipped (pip install scikit-learn for its test set)")
    if "mlp" in wanted:
        models += [(f"mlp-epoch-{e:02d}", lambda e=e: mlp(e)) for e in (1, 3, 10, 30)]
    print(
        "higher accuracy / lower perplexity is better; uniform = every layer at the target, "
        "alpha = spectralyzer allocate"
    )
    for label, make in models:
        for line in run(label, *make()):
            print(line, flush=True)


if __name__ == "__main__":
    main()
