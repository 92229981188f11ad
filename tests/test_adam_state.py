"""Adam's preconditioned curvature from a saved optimizer state, against exact matrices."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from spectralyzer.cli import main
from spectralyzer.errors import InputError
from spectralyzer.hessian import step_sizes as ss
from spectralyzer.probe_pipeline import probe, read_adam_state
from test_hessian import exact_hessian

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


def trained(optimizer_factory, steps=7):
    """A tiny float64 model after a few optimizer steps on its batch, with the optimizer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(40, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    opt = optimizer_factory(model)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y, opt


def torch_adam_scaling(opt) -> torch.Tensor:
    """``lr / (sqrt(v / (1 - beta2^t)) + eps)`` per scalar parameter, read from torch's own
    optimizer state (the running maximum of v with AMSGrad), as torch's Adam divides by it;
    written out here so the tests do not take the preconditioner from the code under test."""
    parts = []
    for group in opt.param_groups:
        lr, (_, beta2), eps = group["lr"], group["betas"], group["eps"]
        for p in group["params"]:
            state = opt.state[p]
            v = state["max_exp_avg_sq" if group["amsgrad"] else "exp_avg_sq"]
            v_hat = v / (1 - beta2 ** float(state["step"]))
            parts.append((lr / (v_hat.sqrt() + eps)).reshape(-1))
    return torch.cat(parts).double()


def exact_scaled_sharpness(model, x, y, scaling, shares=False):
    """lambda_1(D H D), D = sqrt(scaling); with ``shares``, also each parameter's share of
    its eigenvector."""
    h = exact_hessian(model, nn.functional.cross_entropy, x, y)
    d = scaling.sqrt()
    values, vectors = torch.linalg.eigh(d[:, None] * h * d[None, :])
    if not shares:
        return float(values[-1])
    parts = vectors[:, -1].split([p.numel() for p in model.parameters()])
    return float(values[-1]), [float(part.square().sum()) for part in parts]


def test_the_preconditioner_is_torchs_adam_denominator():
    model, x, y, opt = trained(lambda m: torch.optim.Adam(m.parameters(), lr=0.01))
    state = read_adam_state(opt.state_dict(), model, "opt")
    expected = []
    for p in model.parameters():
        v = opt.state[p]["exp_avg_sq"] / (1 - 0.999**7)
        expected.append((0.01 / (v.sqrt() + 1e-8)).reshape(-1))
    torch.testing.assert_close(state.scaling, torch.cat(expected), rtol=1e-12, atol=0)
    assert state.steps == 7 and state.beta1 == 0.9 and state.lrs == (0.01,)


@pytest.mark.parametrize(
    "factory",
    [
        lambda m: torch.optim.Adam(m.parameters(), lr=0.01),
        lambda m: torch.optim.AdamW(m.parameters(), lr=0.003, betas=(0.8, 0.99), amsgrad=True),
    ],
)
def test_preconditioned_top_eigenvalue_equals_the_exact_one(factory):
    model, x, y, opt = trained(factory)
    result = probe(model, x, y, optimizer=opt, steps=57)  # 57 parameters: Lanczos is exact
    exact, shares = exact_scaled_sharpness(model, x, y, torch_adam_scaling(opt), shares=True)
    a = result.adam
    assert a.scaled_sharpness == pytest.approx(exact, rel=1e-6)
    names = [name for name, _ in model.named_parameters()]
    assert a.top_parameter == names[int(np.argmax(shares))]
    assert a.top_share == pytest.approx(max(shares), rel=1e-5)
    group = opt.param_groups[0]
    lr, beta1 = group["lr"], group["betas"][0]
    assert a.lambda_1_preconditioned == pytest.approx(exact / lr, rel=1e-6)
    # Cohen et al. 2022: lr lambda_1(P^-1/2 H P^-1/2) < (2 + 2 beta1) / (1 - beta1): 38 at
    # beta1 = 0.9, 18 at 0.8 (the frozen-preconditioner simulation below checks the bound)
    threshold = {0.9: 38.0, 0.8: 18.0}[beta1]
    assert a.lr_limit == pytest.approx(threshold / (exact / lr), rel=1e-6)
    assert a.headroom == pytest.approx(threshold / exact, rel=1e-6)


def test_groups_with_their_own_learning_rates_scale_their_own_blocks():
    def factory(m):
        first, *rest = m.parameters()
        return torch.optim.Adam([{"params": [first], "lr": 0.1}, {"params": rest, "lr": 0.001}])

    model, x, y, opt = trained(factory)
    result = probe(model, x, y, optimizer=opt.state_dict(), steps=57)
    scaling = torch_adam_scaling(opt)
    assert scaling[:30].max() > 10 * scaling[30:].max()  # the first group's lr shows
    assert result.adam.scaled_sharpness == pytest.approx(
        exact_scaled_sharpness(model, x, y, scaling), rel=1e-6
    )
    assert math.isnan(result.adam.lr) and math.isnan(result.adam.lambda_1_preconditioned)
    assert math.isnan(result.adam.lr_limit)  # one limit for every group's lr does not exist
    assert result.adam.headroom == pytest.approx(38.0 / result.adam.scaled_sharpness)


@pytest.mark.parametrize("beta1", [0.0, 0.5, 0.9])
def test_the_threshold_is_where_frozen_preconditioner_adam_diverges(beta1):
    """Adam's update with P frozen, on f(x) = x'Ax/2: stable just below lr = threshold /
    lambda_1(P^-1/2 A P^-1/2), divergent just above."""
    a = torch.diag(torch.tensor([5.0, 1.0, 0.2], dtype=torch.float64))
    p = torch.tensor([2.0, 0.5, 0.1], dtype=torch.float64)
    top = float(torch.linalg.eigvalsh(a / torch.sqrt(p[:, None] * p[None, :]))[-1])
    limit = ss.adam_threshold(beta1) / top

    def final_norm(lr):
        x, m = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        for _ in range(3000):
            m = beta1 * m + (1 - beta1) * (a @ x)
            x = x - lr * m / p
        return float(x.norm())

    assert final_norm(0.98 * limit) < 1e-3
    assert final_norm(1.02 * limit) > 1e3


@pytest.fixture
def files(tmp_path):
    model, x, y, opt = trained(lambda m: torch.optim.Adam(m.parameters(), lr=0.01))
    paths = {
        "model": tmp_path / "net.pt",
        "data": tmp_path / "batch.pt",
        "opt": tmp_path / "opt.pt",
        "checkpoint": tmp_path / "checkpoint.pt",
        "sgd": tmp_path / "sgd.pt",
        "other": tmp_path / "other.pt",
    }
    torch.jit.script(copy.deepcopy(model)).save(str(paths["model"]))
    torch.save({"inputs": x, "targets": y}, paths["data"])
    torch.save(opt.state_dict(), paths["opt"])
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3},
        paths["checkpoint"],
    )
    torch.save(torch.optim.SGD(model.parameters(), lr=0.1).state_dict(), paths["sgd"])
    other = nn.Linear(5, 3).double()
    torch.save(torch.optim.Adam(other.parameters()).state_dict(), paths["other"])
    paths["exact"] = exact_scaled_sharpness(model, x, y, torch_adam_scaling(opt))
    return paths


def run(*args):
    return CliRunner().invoke(main, ["probe", "--trust-code", *map(str, args)])


@pytest.mark.parametrize("source", ["opt", "checkpoint"])
def test_cli_reports_adams_limit(files, source):
    args = (files["model"], "--data", files["data"], "--steps", 57, "--optimizer-state")
    table = run(*args, files[source])
    assert table.exit_code == 0, table.output
    assert "Adam (from its optimizer state at step 7, beta1 0.9)" in table.stdout
    assert "P^-1/2 H P^-1/2" in table.stdout and "Cohen et al. 2022" in table.stdout
    data = json.loads(run(*args, files[source], "--format", "json").stdout)
    assert data["adam"]["lambda_1_preconditioned"] == pytest.approx(files["exact"] / 0.01, rel=1e-6)
    assert data["adam"]["lr_limit"] == pytest.approx(38 / (files["exact"] / 0.01), rel=1e-6)
    assert (
        json.loads(run(files["model"], "--data", files["data"], "--format", "json").stdout)["adam"]
        is None
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("sgd", "not an Adam/AdamW state"),
        ("other", "the optimizer holds 2 parameters, the model 4"),
        ("data", "not an optimizer state dict"),
        ("missing", "no such file"),
    ],
)
def test_cli_rejects_a_state_that_is_not_this_models_adam(files, source, message):
    path = files.get(source, files["opt"].parent / "missing.pt")
    result = run(files["model"], "--data", files["data"], "--optimizer-state", path)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0]


def test_shapes_are_checked_parameter_by_parameter():
    model, *_ = trained(lambda m: torch.optim.Adam(m.parameters(), lr=0.01))
    swapped = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    opt = torch.optim.Adam([*swapped.parameters()][::-1])  # same count, other order
    opt.zero_grad()
    swapped(torch.randn(2, 5, dtype=torch.float64)).sum().backward()
    opt.step()
    with pytest.raises(InputError, match="parameter 0 has shape"):
        read_adam_state(opt.state_dict(), model, "opt")
    assert np.isfinite(ss.adam_threshold(0.9)) and ss.adam_threshold(0.9) == pytest.approx(38.0)
