"""Small runnable architectures for the demos (``spectralyzer probe --demo``).

Each factory takes no arguments and returns a freshly initialised module, so it
can be named on the command line as ``spectralyzer.demo_nets:<factory>`` with a
checkpoint given separately as ``--weights``.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


def digits_cnn() -> nn.Module:
    """A small CNN for the 8x8 scikit-learn digits: input ``(n, 1, 8, 8)`` float, 10 logits.

    conv 3x3 (1->8) -> BatchNorm -> ReLU -> conv 3x3 (8->16) -> ReLU -> 2x2 max pool
    -> flatten (256) -> dropout 0.1 -> linear 256->32 -> ReLU -> linear 32->10;
    9,818 parameters. Parameter names (``conv1.weight``, ``bn1.running_mean``,
    ``fc2.bias``, ...) are part of the interface: saved weights depend on them.
    """
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(1, 8, 3, padding=1)),
                ("bn1", nn.BatchNorm2d(8)),
                ("relu1", nn.ReLU()),
                ("conv2", nn.Conv2d(8, 16, 3, padding=1)),
                ("relu2", nn.ReLU()),
                ("pool", nn.MaxPool2d(2)),
                ("flatten", nn.Flatten()),
                ("dropout", nn.Dropout(0.1)),
                ("fc1", nn.Linear(256, 32)),
                ("relu3", nn.ReLU()),
                ("fc2", nn.Linear(32, 10)),
            ]
        )
    )
