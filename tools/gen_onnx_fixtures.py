#!/usr/bin/env python3
"""Write the small ONNX fixtures used by the tests of `src/frontend/onnx_proto.rs` and `src/frontend/onnx.rs`.

Usage: python3 gen_onnx_fixtures.py [OUT_DIR]   (default: ../fixtures/onnx relative to this file)

Needs only `pip install onnx numpy`; uses onnx.helper and onnx.numpy_helper (no torch).
Every weight is a small dyadic rational, so float32 storage is exact and the Rust tests
can compare decoded values with `==`.

Each valid model is checked with onnx.checker and evaluated with onnx's reference
evaluator against a hand-written numpy forward pass, so a fixture means what its
name says. Output is deterministic: running the script twice gives identical bytes.
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

IR_VERSION = 8
OPSET = 13
BATCH = "batch"  # symbolic batch dimension


def f32(a):
    return np.asarray(a, dtype=np.float32)


def init(name, array):
    """An initializer stored as raw_data (numpy_helper always uses raw_data)."""
    t = numpy_helper.from_array(np.asarray(array), name=name)
    assert t.HasField("raw_data")
    return t


def inp(name, dims):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def model(graph):
    m = helper.make_model(
        graph,
        producer_name="kinkcheck-fixtures",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    m.ir_version = IR_VERSION
    return m


def relu(z):
    return np.maximum(z, 0)


def check_runs(m, feeds, expected):
    onnx.checker.check_model(m, full_check=True)
    got = ReferenceEvaluator(m).run(None, feeds)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def save(out_dir, name, m):
    path = os.path.join(out_dir, name)
    # SerializeToString rather than onnx.save: onnx.save may try to resolve external data.
    with open(path, "wb") as fh:
        fh.write(m.SerializeToString())
    print(f"{name}: {os.path.getsize(path)} bytes")


# Sample inputs used to sanity-check each model (include kinks and negatives).
X1 = f32([[-1.0], [0.0], [2.5]])
X2 = f32([[0.0, 0.0], [1.0, -2.0], [-0.5, 0.75], [3.0, 1.0]])


def e12_one_neuron():
    w1, b1 = f32([[1.0]]), f32([0.0])
    w2, b2 = f32([[1.0]]), f32([0.0])
    g = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1),
        ],
        "e12_one_neuron",
        [inp("x", [BATCH, 1])],
        [inp("y", [BATCH, 1])],
        [init("W1", w1), init("b1", b1), init("W2", w2), init("b2", b2)],
    )
    m = model(g)
    check_runs(m, {"x": X1}, relu(X1 @ w1.T + b1) @ w2.T + b2)
    return m


# Shared weights of mlp_small / mlp_matmul (Gemm layout: out x in).
MLP_W1 = f32([[1.0, -1.0], [0.5, 2.0], [-1.5, 0.25]])
MLP_B1 = f32([0.0, 0.5, -0.25])
MLP_W2 = f32([[1.0, -2.0, 0.5]])
MLP_B2 = f32([0.125])


def mlp_expected(x):
    return relu(x @ MLP_W1.T + MLP_B1) @ MLP_W2.T + MLP_B2


def mlp_small():
    g = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1", transB=1),
            helper.make_node("Relu", ["h"], ["r"], name="relu1"),
            helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], name="fc2", transB=1),
        ],
        "mlp_small",
        [inp("x", [BATCH, 2])],
        [inp("y", [BATCH, 1])],
        [init("W1", MLP_W1), init("b1", MLP_B1), init("W2", MLP_W2), init("b2", MLP_B2)],
    )
    m = model(g)
    check_runs(m, {"x": X2}, mlp_expected(X2))
    return m


def mlp_matmul():
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W1t"], ["m1"], name="matmul1"),
            helper.make_node("Add", ["m1", "b1"], ["h"], name="add1"),
            helper.make_node("Relu", ["h"], ["r"], name="relu1"),
            helper.make_node("MatMul", ["r", "W2t"], ["m2"], name="matmul2"),
            helper.make_node("Add", ["m2", "b2"], ["y"], name="add2"),
        ],
        "mlp_matmul",
        [inp("x", [BATCH, 2])],
        [inp("y", [BATCH, 1])],
        [
            init("W1t", MLP_W1.T.copy()),  # 2 x 3, as MatMul expects
            init("b1", MLP_B1),
            init("W2t", MLP_W2.T.copy()),  # 3 x 1
            init("b2", MLP_B2),
        ],
    )
    m = model(g)
    check_runs(m, {"x": X2}, mlp_expected(X2))
    return m


ZOO_MAX_FLOOR = f32([-1.0, 0.0, 0.5, -0.25])
ZOO_MIN_CEIL = f32([2.0, 1.5, 3.0, 0.75])
ZOO_CLIP_MIN = f32(-0.5)  # scalar, dims []
ZOO_CLIP_MAX = f32(1.25)


def ops_zoo():
    nodes = [
        # Folded by the Rust decoder into `constants` (scalar "two").
        helper.make_node("Constant", [], ["two"], name="const_two", value_float=2.0),
        helper.make_node("LeakyRelu", ["x"], ["a"], name="leaky", alpha=0.1),
        helper.make_node("Abs", ["a"], ["b"], name="abs"),
        helper.make_node("Neg", ["b"], ["c"], name="neg"),
        helper.make_node("Sub", ["x", "c"], ["d"], name="sub"),
        helper.make_node("Mul", ["d", "two"], ["e"], name="mul"),
        helper.make_node("Max", ["e", "max_floor"], ["f"], name="max"),
        helper.make_node("Min", ["f", "min_ceil"], ["g"], name="min"),
        helper.make_node("Clip", ["g", "clip_min", "clip_max"], ["h"], name="clip"),
        helper.make_node("HardSigmoid", ["h"], ["i"], name="hardsigmoid", alpha=0.2, beta=0.5),
        helper.make_node("Tanh", ["i"], ["j"], name="tanh"),
        helper.make_node("Sigmoid", ["j"], ["k"], name="sigmoid"),
        helper.make_node("Identity", ["k"], ["l"], name="identity"),
        # Folded into `constants` (int64 [3] = [-1, 2, 2]).
        helper.make_node(
            "Constant",
            [],
            ["shape3"],
            name="const_shape3",
            value=numpy_helper.from_array(np.array([-1, 2, 2], dtype=np.int64), name="shape3"),
        ),
        helper.make_node("Reshape", ["l", "shape3"], ["m"], name="reshape3"),
        helper.make_node("Flatten", ["m"], ["n"], name="flatten", axis=1),
        # Shape from an int64 initializer: in `initializers`, but not a parameter.
        helper.make_node("Reshape", ["n", "shape2"], ["y"], name="reshape2"),
    ]
    g = helper.make_graph(
        nodes,
        "ops_zoo",
        [inp("x", [BATCH, 4])],
        [inp("y", [BATCH, 4])],
        [
            init("max_floor", ZOO_MAX_FLOOR),
            init("min_ceil", ZOO_MIN_CEIL),
            init("clip_min", ZOO_CLIP_MIN),
            init("clip_max", ZOO_CLIP_MAX),
            init("shape2", np.array([-1, 4], dtype=np.int64)),
        ],
    )
    m = model(g)
    x = f32([[-2.0, -0.5, 0.0, 1.0], [0.25, 3.0, -1.0, 0.5]])
    a = np.where(x >= 0, x, f32(0.1) * x)
    d = x + np.abs(a)
    e = d * 2
    h = np.clip(np.minimum(np.maximum(e, ZOO_MAX_FLOOR), ZOO_MIN_CEIL), ZOO_CLIP_MIN, ZOO_CLIP_MAX)
    i = np.clip(0.2 * h + 0.5, 0, 1)
    k = 1 / (1 + np.exp(-np.tanh(i)))
    check_runs(m, {"x": x}, k.reshape(-1, 4))
    return m


def maxpool():
    w, b = f32([[0.5, -1.0]]), f32([0.25])
    g = helper.make_graph(
        [
            helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2], strides=[2]),
            helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
            helper.make_node("Gemm", ["f", "W", "b"], ["y"], name="fc", transB=1),
        ],
        "maxpool",
        [inp("x", [BATCH, 1, 4])],
        [inp("y", [BATCH, 1])],
        [init("W", w), init("b", b)],
    )
    m = model(g)
    x = f32([[[1.0, -2.0, 0.5, 0.5]], [[-1.0, -3.0, 2.0, 4.0]]])
    p = x.reshape(-1, 2, 2).max(axis=2)
    check_runs(m, {"x": x}, p @ w.T + b)
    return m


def e14_maxpool():
    w1 = f32([[1.0, 1.0], [0.0, 1.0], [-1.0, 1.0], [0.0, 1.0]])  # output i = row i . x
    b1 = f32([0.0, 0.0, 0.0, 0.0])
    w2 = f32([[1.0, -1.0]])
    b2 = f32([0.0])
    g = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1", transB=1),
            helper.make_node(
                "Constant",
                [],
                ["shape"],
                name="const_shape",
                value=numpy_helper.from_array(np.array([-1, 1, 4], dtype=np.int64), name="shape"),
            ),
            helper.make_node("Reshape", ["h", "shape"], ["h3"], name="reshape"),
            helper.make_node("MaxPool", ["h3"], ["p"], name="pool", kernel_shape=[2], strides=[2]),
            helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
            helper.make_node("Gemm", ["f", "W2", "b2"], ["y"], name="fc2", transB=1),
        ],
        "e14_maxpool",
        [inp("x", [BATCH, 2])],
        [inp("y", [BATCH, 1])],
        [init("W1", w1), init("b1", b1), init("W2", w2), init("b2", b2)],
    )
    m = model(g)
    # y = max(a+b, b) - max(b-a, b) = a for x = (a, b).
    check_runs(m, {"x": X2}, X2[:, :1])
    return m


def float_data():
    """Weights stored in float_data (not raw_data); initializers also listed as graph
    inputs, as pre-IR-4 exporters did."""
    w = [1.0, -0.5, 0.25, 2.0]  # 2 x 2
    b = [0.0, -1.0]
    tw = helper.make_tensor("W", TensorProto.FLOAT, [2, 2], w, raw=False)
    tb = helper.make_tensor("b", TensorProto.FLOAT, [2], b, raw=False)
    assert not tw.HasField("raw_data") and len(tw.float_data) == 4
    g = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W", "b"], ["h"], name="fc", transB=1),
            helper.make_node("Relu", ["h"], ["y"], name="relu"),
        ],
        "float_data",
        [inp("x", [BATCH, 2]), inp("W", [2, 2]), inp("b", [2])],
        [inp("y", [BATCH, 2])],
        [tw, tb],
    )
    m = model(g)
    check_runs(m, {"x": X2}, relu(X2 @ f32(w).reshape(2, 2).T + f32(b)))
    return m


def external():
    """W is marked as stored in an external file; the decoder must reject it."""
    tw = TensorProto()
    tw.name = "W"
    tw.data_type = TensorProto.FLOAT
    tw.dims.extend([1, 2])
    tw.data_location = TensorProto.EXTERNAL
    for k, v in [("location", "weights.bin"), ("offset", "0"), ("length", "8")]:
        e = tw.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["y"], name="fc", transB=1)],
        "external",
        [inp("x", [BATCH, 2])],
        [inp("y", [BATCH, 1])],
        [tw, init("b", f32([0.0]))],
    )
    return model(g)  # not checked: the external file intentionally does not exist


def unsupported_op():
    """Floor is not supported (discontinuous); the lowering must name it and its node."""
    g = helper.make_graph(
        [
            helper.make_node("Floor", ["x"], ["c"], name="floor1"),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "unsupported_op",
        [inp("x", [BATCH, 4])],
        [inp("y", [BATCH, 4])],
        [],
    )
    m = model(g)
    x = f32([[1.5, 3.0, -2.25, 0.5]])
    check_runs(m, {"x": x}, relu(np.floor(x)))
    return m


def gemm_alpha():
    w, b = f32([[2.0, -4.0]]), f32([0.5])
    g = helper.make_graph(
        [
            helper.make_node(
                "Gemm", ["x", "W", "b"], ["y"], name="fc", alpha=0.5, beta=2.0, transA=0, transB=1
            )
        ],
        "gemm_alpha",
        [inp("x", [BATCH, 2])],
        [inp("y", [BATCH, 1])],
        [init("W", w), init("b", b)],
    )
    m = model(g)
    check_runs(m, {"x": X2}, 0.5 * (X2 @ w.T) + 2.0 * b)
    return m


def ops_extra():
    """Gemm with transB=0 and alpha, one-sided Clips (min only; max only via an empty min
    input), Reshape with a 0 entry, broadcasting Sub/Mul against [1,2] and [2,1] tensors,
    Flatten, a 3-input Max with Neg, MatMul, Relu."""
    b = f32([[1.0, -0.5, 0.25, 2.0], [0.5, 1.0, -1.0, 0.0], [-0.25, 0.75, 1.5, -1.0]])  # k x r
    c = f32([0.125, -0.25, 0.0, 0.5])
    lo, hi = f32(-0.75), f32(1.25)
    row, col = f32([[0.5, -0.5]]), f32([[2.0], [-1.0]])
    floor = f32([-0.5, 0.0, 0.25, -1.0])
    v = f32([[1.0, 0.5], [-1.0, 0.25], [0.5, -2.0], [0.75, 1.0]])
    nodes = [
        helper.make_node("Gemm", ["x", "B", "c"], ["h"], name="gemm", alpha=0.5, transB=0),
        helper.make_node("Clip", ["h", "lo"], ["a"], name="clip_lo"),
        helper.make_node("Clip", ["a", "", "hi"], ["b"], name="clip_hi"),
        helper.make_node(
            "Constant",
            [],
            ["shape"],
            name="const_shape",
            value=numpy_helper.from_array(np.array([0, 2, 2], dtype=np.int64), name="shape"),
        ),
        helper.make_node("Reshape", ["b", "shape"], ["r"], name="reshape"),
        helper.make_node("Sub", ["r", "row"], ["s"], name="sub_row"),
        helper.make_node("Mul", ["s", "col"], ["m"], name="mul_col"),
        helper.make_node("Flatten", ["m"], ["f"], name="flatten", axis=1),
        helper.make_node("Neg", ["f"], ["nf"], name="neg"),
        helper.make_node("Max", ["f", "nf", "floor"], ["mx"], name="max3"),
        helper.make_node("MatMul", ["mx", "v"], ["o"], name="matmul"),
        helper.make_node("Relu", ["o"], ["y"], name="relu"),
    ]
    g = helper.make_graph(
        nodes,
        "ops_extra",
        [inp("x", [BATCH, 3])],
        [inp("y", [BATCH, 2])],
        [
            init("B", b),
            init("c", c),
            init("lo", lo),
            init("hi", hi),
            init("row", row),
            init("col", col),
            init("floor", floor),
            init("v", v),
        ],
    )
    m = model(g)
    x = f32([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [3.0, 1.0, -1.0]])
    h = np.clip(0.5 * (x @ b) + c, lo, hi).reshape(-1, 2, 2)
    f = ((h - row) * col).reshape(-1, 4)
    mx = np.maximum(np.maximum(f, -f), floor)
    check_runs(m, {"x": x}, relu(mx @ v))
    return m


FIXTURES = [
    ("e12_one_neuron.onnx", e12_one_neuron),
    ("mlp_small.onnx", mlp_small),
    ("mlp_matmul.onnx", mlp_matmul),
    ("ops_zoo.onnx", ops_zoo),
    ("maxpool.onnx", maxpool),
    ("e14_maxpool.onnx", e14_maxpool),
    ("float_data.onnx", float_data),
    ("external.onnx", external),
    ("unsupported_op.onnx", unsupported_op),
    ("gemm_alpha.onnx", gemm_alpha),
    ("ops_extra.onnx", ops_extra),
]

# Per-sample input shape and output width of the models whose objective is recorded in
# expected.json (the Rust tests lower each model with `--loss mse` and compare).
EXPECTED = [
    ("e12_one_neuron.onnx", [1], 1),
    ("mlp_small.onnx", [2], 1),
    ("mlp_matmul.onnx", [2], 1),
    ("ops_zoo.onnx", [4], 4),
    ("maxpool.onnx", [1, 4], 1),
    ("e14_maxpool.onnx", [2], 1),
    ("float_data.onnx", [2], 2),
    ("gemm_alpha.onnx", [2], 1),
    ("ops_extra.onnx", [3], 2),
]


def expected(out_dir):
    """For each model: a batch of dyadic inputs and targets and the mse objective
    0.5 * sum((y - t)^2) computed from onnx's reference evaluator (float32 outputs, summed in
    float64). Written to expected.json."""
    rng = np.random.default_rng(12345)
    cases = []
    for name, shape, width in EXPECTED:
        with open(os.path.join(out_dir, name), "rb") as fh:
            m = onnx.load_model_from_string(fh.read())
        batch = 3
        x = f32(np.round(rng.uniform(-2, 2, size=[batch] + shape) * 8) / 8)
        t = f32(np.round(rng.uniform(-2, 2, size=[batch, width]) * 8) / 8)
        y = ReferenceEvaluator(m).run(None, {"x": x})[0].astype(np.float64)
        value = 0.5 * float(np.sum((y.reshape(batch, width) - t.astype(np.float64)) ** 2))
        cases.append(
            {
                "model": name,
                "data": {"inputs": x.tolist(), "targets": t.tolist()},
                "mse": value,
            }
        )
    path = os.path.join(out_dir, "expected.json")
    with open(path, "w") as fh:
        json.dump(cases, fh, indent=1)
        fh.write("\n")
    print(f"expected.json: {len(cases)} cases")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "fixtures", "onnx")
    os.makedirs(out_dir, exist_ok=True)
    for name, build in FIXTURES:
        save(out_dir, name, build())
    expected(out_dir)


if __name__ == "__main__":
    main()
