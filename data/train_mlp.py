"""Train the small MLP series in data/mlp/ deterministically (CPU, seeded). Run from the repo root:

    python data/train_mlp.py

A teacher-student task that needs no download: inputs x ~ N(0, I_64), labels
argmax(x T) of a fixed random teacher T (64 x 10), 10% of the training labels
flipped at random.  A 64-256-256-10 ReLU network trained by SGD with momentum;
the weights after epochs 1, 3, 10 and 30 are saved as safetensors, with their
test accuracies in accuracy.csv (the series for `spectralyzer compare` and the
gate tests).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

OUT = Path(__file__).parent / "mlp"
EPOCHS_SAVED = (1, 3, 10, 30)


def make_data(generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    teacher = torch.randn(64, 10, generator=generator)
    x_train, x_test = (
        torch.randn(4000, 64, generator=generator),
        torch.randn(1000, 64, generator=generator),
    )
    y_train, y_test = (x_train @ teacher).argmax(1), (x_test @ teacher).argmax(1)
    flip = torch.rand(4000, generator=generator) < 0.1
    y_train[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=generator)
    return x_train, y_train, x_test, y_test


def main() -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = make_data(generator)
    model = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    OUT.mkdir(exist_ok=True)
    rows = ["model,accuracy"]
    for epoch in range(1, max(EPOCHS_SAVED) + 1):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss_fn(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
        if epoch in EPOCHS_SAVED:
            with torch.no_grad():
                accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
            name = f"epoch_{epoch:02d}.safetensors"
            save_file({k: v.detach().clone() for k, v in model.state_dict().items()}, OUT / name)
            rows.append(f"{name},{accuracy:.4f}")
            print(f"epoch {epoch:2d}: test accuracy {accuracy:.4f} -> {OUT / name}")
    (OUT / "accuracy.csv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
