"""GGUF and ONNX files (issue 13): read through their packages (the gguf and onnx extras),
weights named and oriented as the model uses them, and a one-line error naming the
extra when it is missing.

The GGUF files are written here with ``gguf.GGUFWriter``; the quantised blocks are
decoded in the test from the published block layouts (q8_0: an fp16 scale and 32
int8; q4_0: an fp16 scale and 32 nibbles, low halves first, offset 8), not with
gguf's own routine the reader uses.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import package_dir
from spectralyzer.cli import main
from spectralyzer.errors import InputError
from spectralyzer.io import detect_format, open_checkpoint
from spectralyzer.pipeline import run_analysis

gguf = pytest.importorskip("gguf")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def matrix(out: int, inp: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.1, size=(out, inp)).astype(np.float32)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- GGUF


def q8_0_decoded(raw: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """q8_0 blocks: 2-byte fp16 scale d, then 32 int8 q; x = d * q."""
    blocks = raw.reshape(-1, 34)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(shape)


def q4_0_decoded(raw: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """q4_0 blocks: fp16 scale d, then 16 bytes; element j < 16 is the low nibble of byte j,
    element 16 + j its high nibble; x = d * (nibble - 8)."""
    blocks = raw.reshape(-1, 18)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    packed = blocks[:, 2:]
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32) - 8
    return (d * q).reshape(shape)


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """A two-block llama GGUF with f32, f16, bf16, q8_0 and q4_0 tensors; the dense
    matrices and the test's own decoding of each, by Hugging Face name."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    path = tmp_path_factory.mktemp("gguf") / "model.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(2)
    dense, decoded = {}, {}

    def add(gguf_name, hf_name, w, kind):
        dense[hf_name] = w
        if kind == "f32":
            writer.add_tensor(gguf_name, w)
            decoded[hf_name] = w
        elif kind == "f16":
            writer.add_tensor(gguf_name, w.astype(np.float16))
            decoded[hf_name] = w.astype(np.float16).astype(np.float32)
        else:
            qtype, decode = {"q8_0": (T.Q8_0, q8_0_decoded), "q4_0": (T.Q4_0, q4_0_decoded)}[kind]
            raw = quantize(w, qtype)
            writer.add_tensor(gguf_name, raw, raw_shape=raw.shape, raw_dtype=qtype)
            decoded[hf_name] = decode(raw, w.shape)

    add("token_embd.weight", "model.embed_tokens.weight", matrix(100, 64, 0), "f32")
    add("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", matrix(64, 64, 1), "f16")
    add("blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj.weight", matrix(96, 64, 2), "q8_0")
    add("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight", matrix(64, 96, 3), "q4_0")
    add("output.weight", "lm_head.weight", matrix(100, 64, 4), "q8_0")
    writer.add_tensor("blk.1.attn_norm.weight", np.ones(64, dtype=np.float32))
    writer.add_tensor("custom.mixer", matrix(48, 32, 5))  # no name in gguf's map: kept
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, dense, decoded


def test_gguf_names_shapes_and_dequantised_values(gguf_file):
    path, dense, decoded = gguf_file
    before = digest(path)
    assert detect_format(path) == "gguf"
    with open_checkpoint(path) as ckpt:
        infos = {info.name: info for info in ckpt.tensors()}
        assert set(infos) == {*dense, "model.layers.1.input_layernorm.weight", "custom.mixer"}
        for name, w in dense.items():
            assert infos[name].shape == w.shape  # ne reversed: (out, in) as in PyTorch
            np.testing.assert_array_equal(ckpt.load(name).float().numpy(), decoded[name])
        assert infos["model.layers.0.self_attn.q_proj.weight"].dtype == "float16"
        assert infos["model.layers.0.mlp.up_proj.weight"].dtype == "float32"
        notes = ckpt.notes()
    assert notes["quantisation"] == "GGUF q4_0 (1), q8_0 (2); dequantised to float32 by gguf.quants"
    assert digest(path) == before


def test_gguf_spectra_equal_the_decoded_matrices(gguf_file):
    path, dense, decoded = gguf_file
    analysis = run_analysis(path)
    assert set(analysis.details["name"]) == {*dense, "custom.mixer"}
    for name, w in decoded.items():
        evals = np.sort(analysis.spectra[name].esd.evals)
        s = np.sort(np.linalg.svd(w.astype(np.float64), compute_uv=False))
        np.testing.assert_allclose(evals, s**2, rtol=1e-9, atol=1e-12 * s[-1] ** 2)
        # q4_0 keeps 4 bits per block: |w - w_q| <= d/2 + rounding of d (fp16), d = amax/8 of
        # the block; Mirsky: the singular values move by at most ||W - W_q||_F
        blocks = np.abs(dense[name]).reshape(-1, 32).max(axis=1) / 8
        bound = np.sqrt((np.repeat(blocks * 0.51, 32) ** 2).sum())
        assert (
            np.linalg.norm(np.sqrt(evals) - np.sort(np.linalg.svd(dense[name], compute_uv=False)))
            <= bound
        )


def test_gguf_bf16_keeps_its_dtype(tmp_path):
    from gguf import GGMLQuantizationType as T

    w = torch.from_numpy(matrix(32, 64, 6)).bfloat16()
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    raw = w.view(torch.int16).numpy().view(np.uint8).reshape(32, 128)
    writer.add_tensor("blk.0.attn_k.weight", raw, raw_shape=raw.shape, raw_dtype=T.BF16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open_checkpoint(path) as ckpt:
        (info,) = ckpt.tensors()
        assert (info.name, info.shape, info.dtype) == (
            "model.layers.0.self_attn.k_proj.weight",
            (32, 64),
            "bfloat16",
        )
        assert torch.equal(ckpt.load(info.name), w)


def test_gguf_of_an_unknown_architecture_keeps_its_names(tmp_path):
    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(path, "no-such-arch")
    writer.add_tensor("blk.0.attn_q.weight", matrix(16, 16, 7))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open_checkpoint(path) as ckpt:
        assert [i.name for i in ckpt.tensors()] == ["blk.0.attn_q.weight"]
        assert "tensor_names" not in ckpt.notes()


# ---------------------------------------------------------------- ONNX


def tiny_onnx_model(weights: dict[str, np.ndarray]):
    """x (1, 16) -> MatMul(x, W1) -> Gemm(., W2, transB=1) -> Gemm(., W3) -> Add(., table);
    beside it a Conv, a bidirectional LSTM and an embedding Gather on their own inputs."""
    init = [numpy_helper.from_array(v, name) for name, v in weights.items()]
    nodes = [
        helper.make_node("MatMul", ["x", "onnx::MatMul_7"], ["h1"], name="/fc1/MatMul"),
        helper.make_node("Gemm", ["h1", "fc2.weight"], ["h2"], name="/fc2/Gemm", transB=1),
        helper.make_node("Gemm", ["h2", "onnx::Gemm_9"], ["h3"], name="/fc3/Gemm"),
        helper.make_node("Conv", ["img", "conv.weight"], ["c"], name="/conv/Conv"),
        helper.make_node(
            "LSTM",
            ["seq", "lstm_W", "lstm_R"],
            ["y", "yh"],
            name="/rnn/LSTM",
            hidden_size=8,
            direction="bidirectional",
        ),
        helper.make_node("Gather", ["embed.weight", "ids"], ["e"], name="/embed/Gather"),
        helper.make_node("Add", ["h3", "bias_table"], ["out"], name="/add"),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("x", f, [1, 16]),
            helper.make_tensor_value_info("img", f, [1, 8, 10]),
            helper.make_tensor_value_info("seq", f, [5, 1, 12]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [3]),
        ],
        [helper.make_tensor_value_info(n, f, None) for n in ("out", "c", "y", "e")],
        init,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def onnx_weights():
    return {
        "onnx::MatMul_7": matrix(16, 32, 10),  # (in, out) as MatMul stores it
        "fc2.weight": matrix(8, 32, 11),  # (out, in) with transB=1
        "onnx::Gemm_9": matrix(8, 24, 12),  # (in, out): Gemm without transB
        "conv.weight": matrix(16, 8, 13).repeat(3).reshape(16, 8, 3) * np.float32([1.0, -2.0, 0.5]),
        "lstm_W": np.stack([matrix(32, 12, 14), matrix(32, 12, 15)]),  # (2 dirs, 4 * 8, 12)
        "lstm_R": np.stack([matrix(32, 8, 16), matrix(32, 8, 17)]),
        "embed.weight": matrix(50, 12, 18),
        "bias_table": matrix(1, 24, 19),  # used by Add: listed as it is
    }


EXPECTED_ONNX = {  # listed name -> (stored name, how the stored tensor becomes it)
    "/fc1/MatMul.weight": ("onnx::MatMul_7", lambda a: a.T),
    "fc2.weight": ("fc2.weight", lambda a: a),
    "/fc3/Gemm.weight": ("onnx::Gemm_9", lambda a: a.T),
    "conv.weight": ("conv.weight", lambda a: a),
    "/rnn/LSTM.weight_ih_l0": ("lstm_W", lambda a: a[0]),
    "/rnn/LSTM.weight_ih_l0_reverse": ("lstm_W", lambda a: a[1]),
    "/rnn/LSTM.weight_hh_l0": ("lstm_R", lambda a: a[0]),
    "/rnn/LSTM.weight_hh_l0_reverse": ("lstm_R", lambda a: a[1]),
    "embed.weight": ("embed.weight", lambda a: a),
    "bias_table": ("bias_table", lambda a: a),
}


def check_onnx(path: Path, weights: dict[str, np.ndarray]) -> None:
    before = digest(path)
    assert detect_format(path) == "onnx"
    with open_checkpoint(path) as ckpt:
        infos = {info.name: info for info in ckpt.tensors()}
        assert set(infos) == set(EXPECTED_ONNX)
        for name, (stored, orient) in EXPECTED_ONNX.items():
            expected = orient(weights[stored])
            assert infos[name].shape == expected.shape, name
            np.testing.assert_array_equal(ckpt.load(name).numpy(), expected)
    assert digest(path) == before


def test_onnx_weights_are_oriented_as_the_graph_uses_them(tmp_path, onnx_weights):
    path = tmp_path / "tiny.onnx"
    onnx.save_model(tiny_onnx_model(onnx_weights), path)
    check_onnx(path, onnx_weights)
    rows = run_analysis(path).details.set_index("name")
    assert rows.loc["/rnn/LSTM.weight_hh_l0_reverse", "layer_type"] == "lstm"
    assert rows.loc["conv.weight", "layer_type"] == "conv1d"


def test_onnx_external_data(tmp_path, onnx_weights):
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        tiny_onnx_model(onnx_weights),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.weights",
        size_threshold=0,
    )
    assert (tmp_path / "ext.weights").stat().st_size > 0
    check_onnx(path, onnx_weights)


def test_onnx_external_data_outside_the_folder_is_refused(tmp_path, onnx_weights):
    model = tiny_onnx_model(onnx_weights)
    inside = tmp_path / "model"
    inside.mkdir()
    onnx.save_model(
        model,
        inside / "m.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.bin",
        size_threshold=0,
    )
    (tmp_path / "w.bin").write_bytes((inside / "w.bin").read_bytes())
    loaded = onnx.load(inside / "m.onnx", load_external_data=False)
    for tensor in loaded.graph.initializer:
        for item in tensor.external_data:
            if item.key == "location":
                item.value = "../w.bin"
    onnx.save_model(loaded, inside / "m.onnx")
    with open_checkpoint(inside / "m.onnx") as ckpt:
        with pytest.raises(InputError, match="outside the model's folder"):
            ckpt.load("fc2.weight")


def silero_file(name: str) -> Path:
    path = package_dir("silero_vad") / "data" / name
    assert path.is_file(), path
    return path


def onnx_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every initializer and Constant tensor of a model and its subgraphs, read with onnx."""
    found = {}
    graphs = [onnx.load(path).graph]
    while graphs:
        graph = graphs.pop()
        found |= {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            for attribute in node.attribute:
                if node.op_type == "Constant" and attribute.name == "value":
                    found[node.output[0]] = numpy_helper.to_array(attribute.t)
                if attribute.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attribute.g)
    return found


@pytest.mark.parametrize(
    ("name", "prefixes"),
    [
        ("silero_vad_16k_op15.onnx", ["model."]),
        # weights as Constant nodes inside If branches, one branch per sample rate
        ("silero_vad.onnx", ["If_0_then_branch__Inline_0__", "If_0_else_branch__Inline_0__"]),
    ],
)
def test_silero_vad_onnx(name, prefixes):
    path = silero_file(name)
    stored = onnx_tensors(path)
    analysis = run_analysis(path)
    rows = analysis.details.set_index("name")
    expected = [
        f"{p}{layer}"
        for p in prefixes
        for layer in [f"encoder.{i}.reparam_conv.weight" for i in range(4)]
        + ["decoder.rnn.weight_ih", "decoder.rnn.weight_hh"]
    ]
    assert set(expected) <= set(rows.index)
    for layer in expected:
        w = stored[layer]
        assert rows.loc[layer, "layer_type"] == ("lstm" if "rnn" in layer else "conv1d")
        slices = w.reshape(1, *w.shape) if w.ndim == 2 else np.moveaxis(w, 2, 0)
        s = np.sort(
            np.concatenate([np.linalg.svd(m.astype(np.float64), compute_uv=False) for m in slices])
        )
        np.testing.assert_allclose(
            np.sort(analysis.spectra[layer].esd.evals), s**2, rtol=1e-9, atol=1e-9 * s[-1] ** 2
        )


# ---------------------------------------------------------------- missing extras, sniffing


@pytest.mark.parametrize(("module", "fmt"), [("gguf", "GGUF"), ("onnx", "ONNX")])
def test_missing_extra_names_the_format_and_the_install_line(
    tmp_path, monkeypatch, gguf_file, onnx_weights, module, fmt
):
    if module == "gguf":
        path = gguf_file[0]
    else:
        path = tmp_path / "m.bin"  # no .onnx suffix: detected from its first bytes
        onnx.save_model(tiny_onnx_model(onnx_weights), path)
    monkeypatch.setitem(sys.modules, module, None)  # import gguf / onnx now raises ImportError
    result = CliRunner().invoke(main, ["analyze", os.fspath(path)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"spectralyzer: error: {path}: {fmt} file: reading it needs the {module} extra: "
        f"pip install 'spectralyzer[{module}]'"
    ]


def test_sniffing_does_not_mistake_other_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_bytes(b"\x08\x07\xff not a model")  # 0xff is no ModelProto field tag
    with pytest.raises(InputError, match="not a recognised checkpoint format"):
        detect_format(text)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"garbage that is no protobuf \xff\xff")
    result = CliRunner().invoke(main, ["analyze", os.fspath(broken)])
    assert result.exit_code == 2 and "cannot read ONNX model" in result.output


def test_a_truncated_gguf_is_one_line_and_exit_2(tmp_path, gguf_file):
    path = tmp_path / "cut.gguf"
    path.write_bytes(gguf_file[0].read_bytes()[:300])
    result = CliRunner().invoke(main, ["analyze", os.fspath(path)])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"spectralyzer: error: {path}: cannot read GGUF file (")


def test_onnx_qdq_weights_are_dequantised_then_oriented(tmp_path):
    """onnxruntime's QDQ format: int8 W (in, out), per-output-channel scale on axis 1,
    DequantizeLinear -> MatMul; and a uint8 Conv kernel with one scale and zero point."""
    rng = np.random.default_rng(20)
    q = rng.integers(-127, 128, size=(24, 16), dtype=np.int8)
    scale = rng.uniform(0.01, 0.02, size=16).astype(np.float32)
    kq = rng.integers(0, 256, size=(16, 8, 3), dtype=np.uint8)
    kscale, kzero = np.float32(0.05), np.uint8(128)
    init = [
        numpy_helper.from_array(q, "w_quantized"),
        numpy_helper.from_array(scale, "w_scale"),
        numpy_helper.from_array(np.zeros(16, dtype=np.int8), "w_zero"),
        numpy_helper.from_array(kq, "k_quantized"),
        numpy_helper.from_array(np.array(kscale), "k_scale"),
        numpy_helper.from_array(np.array(kzero), "k_zero"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_quantized", "w_scale", "w_zero"], ["w"], axis=1),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="/fc/MatMul"),
        helper.make_node("DequantizeLinear", ["k_quantized", "k_scale", "k_zero"], ["k"]),
        helper.make_node("Conv", ["img", "k"], ["c"], name="/conv/Conv"),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "qdq",
        [
            helper.make_tensor_value_info("x", f, [1, 24]),
            helper.make_tensor_value_info("img", f, [1, 8, 10]),
        ],
        [helper.make_tensor_value_info(n, f, None) for n in ("y", "c")],
        init,
    )
    path = tmp_path / "qdq.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    w = (q.astype(np.float32) * scale).T  # (out, in)
    kernel = (kq.astype(np.float32) - 128) * kscale
    with open_checkpoint(path) as ckpt:
        infos = {i.name: i for i in ckpt.tensors()}
        assert (infos["/fc/MatMul.weight"].shape, infos["/fc/MatMul.weight"].dtype) == (
            (16, 24),
            "float32",
        )
        np.testing.assert_allclose(ckpt.load("/fc/MatMul.weight").numpy(), w, rtol=1e-6)
        np.testing.assert_allclose(ckpt.load("/conv/Conv.weight").numpy(), kernel, rtol=1e-6)
        assert infos["w_scale"].problem == "quantisation scales of /fc/MatMul.weight"
        assert infos["k_zero"].problem == "quantisation zero points of /conv/Conv.weight"
        assert ckpt.notes() == {
            "quantisation": "ONNX DequantizeLinear; 2 weights dequantised to float32"
        }
    analysis = run_analysis(path)
    assert set(analysis.details["name"]) == {"/fc/MatMul.weight", "/conv/Conv.weight"}
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(
        np.sort(analysis.spectra["/fc/MatMul.weight"].esd.evals),
        np.sort(s**2),
        rtol=1e-9,
        atol=1e-12 * s.max() ** 2,
    )
