"""Export of a trained network to ONNX (needs the ``train`` extra), checked against torch."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np

from ..errors import ModelError
from .neural import NeuralSpec

__all__ = ["to_onnx"]


def to_onnx(network: Any, spec: NeuralSpec, *, check_atol: float = 1e-4) -> bytes:
    """Serializes ``network`` as an ONNX graph with a dynamic batch axis.

    The graph's input is ``x`` (n, ``spec.n_inputs``) float32 and its output ``q`` (n, 3, horizon).
    After export, ONNX Runtime and torch are run on the same random input and must agree.

    Raises:
        ModelError: the exported graph's outputs differ from torch's by more than ``check_atol``.
    """
    import onnxruntime as ort
    import torch

    network.eval()
    example = torch.randn(4, spec.n_inputs)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (example,),
            buf,  # type: ignore[arg-type]
            dynamo=False,
            input_names=["x"],
            output_names=["q"],
            dynamic_axes={"x": {0: "n"}, "q": {0: "n"}},
            opset_version=17,
        )
    data = buf.getvalue()
    x = np.random.default_rng(0).normal(size=(16, spec.n_inputs)).astype(np.float32)
    with torch.no_grad():
        want = network(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    err = float(np.max(np.abs(got - want)))
    if err > check_atol:
        raise ModelError(
            f"The ONNX export differs from the torch network by {err:.2e} (> {check_atol}); "
            "report this with the model's spec."
        )
    return data
