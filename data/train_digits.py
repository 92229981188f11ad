"""Train the demo CNN of data/digits/ deterministically (CPU, seeded). Run from the repo root:

    pip install scikit-learn      # or: pip install -e '.[train]'
    python data/train_digits.py

The model is ``spectralyzer.demo_nets:digits_cnn`` (9,818 parameters), trained
on scikit-learn's 8x8 handwritten digits (``load_digits``: 1797 images, pixel
values 0..16 scaled to 0..1; the data set is BSD-3-Clause licensed, as
scikit-learn).  A seeded split gives 1297 training and 500 test images; Adam
with mini-batches of 32 for a few epochs takes a few seconds on one core.

Writes, for ``spectralyzer probe --demo``:

* ``digits/cnn.safetensors``: the state dict (float32 parameters and BatchNorm
  running statistics, plus BatchNorm's int64 ``num_batches_tracked``);
* ``digits/batch.npz``: ``inputs`` float32 (512, 1, 8, 8) and ``targets``
  int64 (512,), 512 *training* images, the batch whose loss surface one probes;
* ``digits/adam.pt``: the Adam optimizer's ``state_dict()`` at the end of training
  (``torch.save``; step, first and second moments), for the preconditioned
  curvature of ``probe --optimizer-state``;
* ``digits/info.json``: accuracies (train, test, on the batch; eval mode),
  epochs, optimizer, split, seed and versions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import sklearn
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from spectralyzer.demo_nets import digits_cnn  # noqa: E402

OUT = Path(__file__).parent / "digits"
SEED = 0
N_TRAIN = 1297  # the remaining 500 images are the test set
N_BATCH = 512
EPOCHS = 30
BATCH_SIZE = 32
LR = 3e-3


def make_data(generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Train and test images ``(n, 1, 8, 8)`` in [0, 1] and their int64 labels."""
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=generator)
    train, test = order[:N_TRAIN], order[N_TRAIN:]
    return images[train], labels[train], images[test], labels[test]


def accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of correct predictions, in eval mode (as ``spectralyzer probe`` runs it)."""
    model.eval()
    with torch.no_grad():
        return (model(inputs).argmax(1) == targets).double().mean().item()


def main() -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    x_train, y_train, x_test, y_test = make_data(generator)
    model = digits_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(1, EPOCHS + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            loss_fn(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
        if epoch % 5 == 0 or epoch == EPOCHS:
            print(f"epoch {epoch:2d}: test accuracy {accuracy(model, x_test, y_test):.4f}")

    chosen = torch.randperm(len(x_train), generator=generator)[:N_BATCH]
    inputs, targets = x_train[chosen], y_train[chosen]
    info = {
        "model": "spectralyzer.demo_nets:digits_cnn",
        "data": "sklearn.datasets.load_digits (8x8 images, pixels / 16; BSD-3-Clause)",
        "train_accuracy": accuracy(model, x_train, y_train),
        "test_accuracy": accuracy(model, x_test, y_test),
        "batch_accuracy": accuracy(model, inputs, targets),
        "epochs": EPOCHS,
        "optimizer": f"Adam(lr={LR}), mini-batches of {BATCH_SIZE}, cross-entropy",
        "split": {"train": len(x_train), "test": len(x_test), "batch": N_BATCH},
        "batch_from": "training set",
        "seed": SEED,
        "sklearn_version": sklearn.__version__,
        "torch_version": torch.__version__,
    }
    OUT.mkdir(exist_ok=True)
    state = {name: t.detach().clone().contiguous() for name, t in model.state_dict().items()}
    save_file(state, OUT / "cnn.safetensors")
    torch.save(optimizer.state_dict(), OUT / "adam.pt")
    np.savez_compressed(OUT / "batch.npz", inputs=inputs.numpy(), targets=targets.numpy())
    (OUT / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
