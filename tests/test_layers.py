import pytest
import torch

from spectralyzer.io.base import TensorInfo
from spectralyzer.layers import Selection, layer_type, plan, to_matrices


def info(name, shape, dtype="float32"):
    return TensorInfo(name, tuple(shape), dtype)


@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        ("encoder.layer.0.attention.self.query.weight", (384, 384), "linear"),
        ("embeddings.word_embeddings.weight", (30522, 384), "embedding"),
        ("transformer.wte.weight", (50257, 768), "embedding"),
        ("transformer.h.0.attn.c_attn.weight", (768, 2304), "gpt2-conv1d"),
        ("transformer.h.0.mlp.c_proj.weight", (3072, 768), "gpt2-conv1d"),
        ("lstm.weight_ih_l0", (512, 64), "lstm"),
        ("lstm.weight_hh_l0", (512, 128), "lstm"),
        ("gru.weight_hh_l1_reverse", (384, 128), "gru"),
        ("decoder.rnn.weight_hh", (512, 128), "lstm"),  # nn.LSTMCell
        ("conv1.weight", (64, 3, 7), "conv1d"),
        ("features.0.weight", (64, 3, 3, 3), "conv2d"),
        ("c3d.weight", (8, 4, 3, 3, 3), "conv3d"),
        ("pos_embed", (1, 197, 768), None),
    ],
)
def test_layer_type(name, shape, expected):
    assert layer_type(info(name, shape)) == expected


def test_plan_skips_vectors_integers_and_small_matrices_with_reasons():
    infos = [
        info("a.bias", (384,)),
        info("a.weight", (384, 384)),
        info("position_ids", (1, 512), "int64"),
        info("token_type_embeddings.weight", (2, 384)),
        info("huge.weight", (100, 50)),
    ]
    specs, skipped = plan(infos, Selection(max_evals=40))
    assert [s.name for s in specs] == []  # 384 > 40 and 50 > 40
    reasons = {s.name: s.reason for s in skipped}
    assert "a.bias" not in reasons
    assert "int64" in reasons["position_ids"]
    assert "min_evals" in reasons["token_type_embeddings.weight"]
    assert "max_evals" in reasons["huge.weight"]
    specs, _ = plan(infos, Selection())
    assert [(s.name, s.N, s.M) for s in specs] == [("a.weight", 384, 384), ("huge.weight", 100, 50)]


def test_selection_by_regex_and_type():
    infos = [
        info("enc.0.q.weight", (64, 32)),
        info("enc.1.q.weight", (64, 32)),
        info("enc.1.conv.weight", (16, 8, 3, 3)),
        info("emb.embed_tokens.weight", (1000, 32)),
    ]
    names = lambda sel: [s.name for s in plan(infos, sel)[0]]  # noqa: E731
    assert names(Selection(layers=r"enc\.1\.")) == ["enc.1.conv.weight", "enc.1.q.weight"]
    assert names(Selection(exclude="conv")) == [  # natural order of the names
        "emb.embed_tokens.weight",
        "enc.0.q.weight",
        "enc.1.q.weight",
    ]
    assert names(Selection(types=("embedding", "conv2d"))) == [
        "emb.embed_tokens.weight",
        "enc.1.conv.weight",
    ]


@pytest.mark.parametrize("out_ch,in_ch", [(128, 256), (256, 128)])
def test_conv_slices_are_oriented_n_ge_m(out_ch, in_ch):
    # docs/theory.md section 5: Conv2d(256, 128, 2) must give Q = 2 and 4 * 128 eigenvalues
    w = torch.randn(out_ch, in_ch, 2, 2)
    (spec,), _ = plan([info("conv.weight", w.shape)], Selection())
    assert (spec.N, spec.M, spec.num_slices, spec.num_evals) == (256, 128, 4, 512)
    stack = to_matrices(w, spec)
    assert stack.shape == (4, 256, 128)
    expected = w[:, :, 1, 0] if out_ch >= in_ch else w[:, :, 1, 0].T
    assert torch.equal(stack[2], expected)  # kernel position (1, 0) is slice 1*2 + 0


def test_conv_unfold_view():
    w = torch.randn(16, 8, 3, 3)
    (spec,), _ = plan([info("conv.weight", w.shape)], Selection(conv_mode="unfold"))
    assert (spec.N, spec.M, spec.num_slices) == (72, 16, 1)
    stack = to_matrices(w, spec)
    assert torch.equal(stack[0], w.reshape(16, 72).T)


def test_unknown_conv_mode_is_rejected():
    with pytest.raises(ValueError, match="conv_mode"):
        plan([], Selection(conv_mode="diagonal"))
