"""Folding the input's rescaling into the first convolution changes nothing but the cost."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from covidxray.ml.onnx_graph import fold_input_scaling
from covidxray.predictors.runtime import DEFAULT_MODEL

SIZE = 32


def _net(pads: list[int], scale: float = 2.0, shift: float = -1.0, strides: int = 2) -> onnx.ModelProto:
    """image (n, 32, 32, 1) -> ·scale + shift -> NCHW reshape -> Conv 3×3 (8 filters) -> Relu."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(scale, np.float32), "scale"),
        numpy_helper.from_array(np.array(shift, np.float32), "shift"),
        numpy_helper.from_array(np.array([-1, 1, SIZE, SIZE], np.int64), "nchw"),
        numpy_helper.from_array(rng.normal(size=(8, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Mul", ["image", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], ["shifted"]),
        helper.make_node("Reshape", ["shifted", "nchw"], ["planes"]),
        helper.make_node("Conv", ["planes", "w", "b"], ["conv"], pads=pads, strides=[strides, strides]),
        helper.make_node("Relu", ["conv"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "net",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", SIZE, SIZE, 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 8, "h", "w"])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"image": batch})[0])


@pytest.mark.parametrize("pads", [[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
@pytest.mark.parametrize(("scale", "shift"), [(2.0, -1.0), (1 / 255, 0.5)])
def test_folded_graph_gives_the_same_output(pads: list[int], scale: float, shift: float) -> None:
    model = _net(pads, scale, shift)
    batch = np.random.default_rng(1).random((3, SIZE, SIZE, 1), dtype=np.float32)
    before = _run(model, batch)
    assert fold_input_scaling(model)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node][:2] != ["Mul", "Add"]
    assert "scale" not in {t.name for t in model.graph.initializer}  # the old constants are gone
    np.testing.assert_allclose(_run(model, batch), before, atol=1e-5, rtol=1e-5)


def test_graph_without_the_pattern_is_left_alone() -> None:
    model = _net([0, 0, 1, 1])
    model.graph.node[1].op_type = "Sub"  # not a Mul + Add any more
    untouched = model.SerializeToString()
    assert not fold_input_scaling(model)
    assert model.SerializeToString() == untouched


def test_shipped_float_twin_is_already_folded() -> None:
    graph = onnx.load(str(DEFAULT_MODEL.with_suffix(".onnx"))).graph
    assert graph.node[0].op_type != "Mul"
    assert not fold_input_scaling(onnx.load(str(DEFAULT_MODEL.with_suffix(".onnx"))))
