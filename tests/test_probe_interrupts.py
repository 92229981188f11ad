"""A probe stops at the next curvature product once Ctrl-C or SIGTERM was asked for.

The check used to sit inside ``hessian/operator.py``; the math folder now
imports nothing outside itself, and ``spectralyzer.probe`` wraps every
operator it hands to an estimator (``Interruptible``).  Kept behaviour, so this
passes before and after the move.
"""

import signal
import time

import pytest
import torch
from torch import nn

from spectralyzer import interrupts
from spectralyzer.hessian.operator import HessianOperator
from spectralyzer.probe_pipeline import Interruptible, probe


def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    return model, torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))


def test_a_requested_stop_interrupts_the_probe_at_the_next_product(monkeypatch):
    products = []
    matvec = HessianOperator.matvec
    monkeypatch.setattr(
        HessianOperator, "matvec", lambda op, v: products.append(1) or matvec(op, v)
    )
    model, x, y = tiny()
    with interrupts.flag_signals():
        signal.raise_signal(signal.SIGTERM)
        time.sleep(0.01)  # the handler has run and only set the flag
        with pytest.raises(interrupts.Interrupted) as stop:
            probe(model, x, y, trace=True, batch_sizes=(4, 8))
    assert stop.value.exit_code == 143
    assert products == []  # not one product after the request


def test_the_wrapper_is_the_operator_it_wraps_with_a_check():
    model, x, y = tiny()
    op = HessianOperator(model, nn.functional.cross_entropy, x, y)
    checked = Interruptible(op)
    v = torch.randn(op.dim, dtype=torch.float64)
    assert (checked.dim, checked.dtype, checked.device) == (op.dim, op.dtype, op.device)
    torch.testing.assert_close(checked.matvec(v), op.matvec(v), rtol=0, atol=0)
    assert checked.gradient is op.gradient and checked.names == op.names
