#!/usr/bin/env python3
"""Write the invalid ONNX models of fixtures/onnx/bad/ (each must be an input error, exit 2,
with a message naming the node or tensor) and their batch data.json.

Usage: python3 tools/gen_bad_onnx.py [OUT_DIR]   (needs onnx and numpy only; deterministic)
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def model(nodes, inits, name):
    g = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        inits,
    )
    m = helper.make_model(g, producer_name="kinkcheck-bad", opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def w(shape):
    return numpy_helper.from_array(np.full(shape, 0.5), name="W")


def conv(**attrs):
    return helper.make_node("Conv", ["x", "W"], ["y"], name="conv1", **attrs)


def external(name, location, length):
    t = TensorProto()
    t.name = "W"
    t.data_type = TensorProto.DOUBLE
    t.dims.extend([1, 1, 3, 3])
    t.data_location = TensorProto.EXTERNAL
    for k, v in [("location", location), ("offset", "0"), ("length", str(length))]:
        e = t.external_data.add()
        e.key, e.value = k, v
    return model([conv()], [t], name)


CASES = {
    # W has 3 input channels, x has 1
    "conv_shapes.onnx": lambda: model([conv()], [w([2, 3, 3, 3])], "conv_shapes"),
    "conv_negative_pads.onnx": lambda: model([conv(pads=[-1, 0, 0, 0])], [w([1, 1, 3, 3])], "neg"),
    # a 5x5 kernel on a 4x4 input without padding
    "conv_big_kernel.onnx": lambda: model([conv()], [w([1, 1, 5, 5])], "big"),
    "conv_auto_pad.onnx": lambda: model([conv(auto_pad="SAME_MIDDLE")], [w([1, 1, 3, 3])], "ap"),
    "maxpool_big_kernel.onnx": lambda: model(
        [helper.make_node("MaxPool", ["x"], ["y"], name="pool1", kernel_shape=[3, 3], dilations=[2, 2])],
        [],
        "mp",
    ),
    "ext_escape.onnx": lambda: external("ext_escape", "../outside.bin", 72),
    "ext_absolute.onnx": lambda: external("ext_absolute", "/etc/hostname", 72),
    # 9 doubles need 72 bytes; the file beside the model has 40
    "ext_short.onnx": lambda: external("ext_short", "ext_short.onnx.data", 72),
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "fixtures", "onnx", "bad")
    os.makedirs(out, exist_ok=True)
    for name, build in CASES.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(build().SerializeToString())
    with open(os.path.join(out, "ext_short.onnx.data"), "wb") as f:
        f.write(np.full(5, 0.5).tobytes())
    with open(os.path.join(out, "data.json"), "w") as f:
        json.dump({"inputs": [[[[0.25 * (i % 5) for i in range(r * 4, r * 4 + 4)] for r in range(4)]]]}, f)
        f.write("\n")
    print(f"{len(CASES)} models in {out}")


if __name__ == "__main__":
    main()
