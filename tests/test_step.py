"""The step builder: which fusions it chooses, when, and that a fused step computes what the plain one does."""
import numpy as np
import pytest

import portablenn as pn
from portablenn.reducer import FlatGradients, Reducer

from _support import classification_data, require_dtype


class Weighted(pn.SoftmaxCrossEntropy):
    """A subclass may change the math: it inherits no fused twin until it names one."""


def _step(device, optimizer, loss=None, reducer=None, model=None):
    model = (model or pn.mlp([4, 6, 3], seed=1, dtype="float64")).to(device)
    optimizer.bind(model)
    gradients = FlatGradients(model) if reducer is not None else None
    return pn.make_step(model, loss or pn.SoftmaxCrossEntropy(), optimizer, device, reducer=reducer,
                        gradients=gradients)


@pytest.mark.parametrize("spec, kernels, optimizer, expected", [
    ("cpu", "fast", lambda: pn.SGD(0.1), ["loss", "sgd_in_gemm"]),
    ("cpu", "fast", lambda: pn.SGD(0.1, momentum=0.9), ["loss"]),
    ("cpu", "fast", lambda: pn.Adam(0.01), ["loss"]),
    ("cpu", "generic", lambda: pn.SGD(0.1), []),
    ("array_api_strict:device1", "auto", lambda: pn.SGD(0.1), []),
])
def test_the_step_chooses_the_fusions_its_kernels_offer(spec, kernels, optimizer, expected):
    dev = pn.device(spec, kernels=kernels) if spec == "cpu" else pn.backend.probe(spec)[0]
    if dev is None:
        pytest.skip(f"{spec} is not available")
    assert _step(dev, optimizer()).fused == expected


def test_no_sgd_in_the_gemms_with_a_reducer_clipping_or_a_loss_subclass():
    dev = pn.device("cpu")
    assert _step(dev, pn.SGD(0.1), reducer=Reducer()).fused == ["loss"]  # gradients must exist to be summed
    model = pn.mlp([4, 6, 3], seed=1, dtype="float64")
    optimizer = pn.SGD(0.1).bind(model)
    assert pn.make_step(model, pn.SoftmaxCrossEntropy(), optimizer, dev, clip_norm=1.0).fused == ["loss"]  # and clipped
    assert _step(dev, pn.SGD(0.1), loss=Weighted()).fused == ["sgd_in_gemm"]


@pytest.mark.parametrize("optimizer", [lambda: pn.SGD(0.3), lambda: pn.SGD(0.3, momentum=0.8, nesterov=True)],
                         ids=["sgd", "nesterov"])
def test_a_fused_step_trains_as_the_plain_composition(device, optimizer):
    """NumPy's fused step (loss twin, SGD in the GEMMs) against the same step built on the generic kernels,
    step by step in float64, on every device's own build of it."""
    require_dtype(device, "float64")
    X, y = classification_data(n=40, features=4, classes=3, seed=3)
    plain = pn.mlp([4, 6, 3], seed=1, dtype="float64")
    fused = pn.mlp([4, 6, 3], seed=1, dtype="float64")
    generic = pn.device("cpu", kernels="generic")
    for epoch in range(1, 4):
        pn.fit(plain, X, y, optimizer=optimizer(), epochs=1, batch_size=10, device=generic, l2=1e-2, seed=epoch)
        pn.fit(fused, X, y, optimizer=optimizer(), epochs=1, batch_size=10, device=device, l2=1e-2, seed=epoch)
        for key, value in plain.state_dict().items():
            np.testing.assert_allclose(fused.state_dict()[key], value, rtol=1e-12, atol=1e-14, err_msg=key)
