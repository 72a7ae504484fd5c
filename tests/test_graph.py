"""fit(graph=True): the recorded static step (a CUDA graph on CuPy, eager elsewhere) trains exactly
as the ordinary loop does, keeps the loop free of host syncs and refuses what it cannot replay."""
import warnings

import numpy as np
import pytest

import portablenn as pn

from _support import classification_data
from _tolerances import assert_close, assert_state_close

CASES = {  # name: (n, batch_size, shuffle, l2, optimizer, model keywords)
    "shuffled-partial-last-batch": (30, 7, True, 1e-3, lambda: pn.SGD(0.2), {}),
    "in-order-momentum": (30, 10, False, 0.0, lambda: pn.SGD(0.1, momentum=0.9, nesterov=True), {}),
    "full-batch-l2": (30, None, True, 1e-2, lambda: pn.SGD(0.5), {}),
    "batch-of-one": (5, 1, True, 0.0, lambda: pn.SGD(0.05, momentum=0.5), {}),
    "tanh-no-bias-momentum-l2": (30, 8, True, 1e-3, lambda: pn.SGD(0.1, momentum=0.9),
                                 dict(activation="tanh", bias=False)),
    "sigmoid": (30, 6, False, 0.0, lambda: pn.SGD(0.3), dict(activation="sigmoid")),
}


def _fit(device, dtype, case, graph, epochs=3, **kw):
    n, batch_size, shuffle, l2, make_optimizer, layout = CASES[case]
    X, y = classification_data(n=n, features=4)
    model = pn.mlp([4, 6, 5, 3], dtype=dtype, seed=1, **layout).to(device)
    optimizer = make_optimizer()
    history = pn.fit(model, X, y, optimizer=optimizer, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                     l2=l2, graph=graph, **kw)
    return model.state_dict(), history, optimizer.steps


@pytest.mark.parametrize("case", sorted(CASES))
def test_recorded_step_trains_as_the_ordinary_loop(device, dtype, case):
    (state, history, steps), (reference, expected, expected_steps) = (
        _fit(device, dtype, case, graph=True), _fit(device, dtype, case, graph=False))
    assert steps == expected_steps
    # on the CPU the same kernels run on gathered copies of the same rows: bit for bit the same;
    # a GPU's private cuBLAS handle may pick another GEMM algorithm
    factor = 0 if device.kind == "cpu" else 10
    assert_state_close(state, reference, dtype, factor=factor)
    for field in ("loss", "error"):
        assert_close(history[field], expected[field], dtype, factor=factor)
    assert history["epoch"] == expected["epoch"]


@pytest.mark.parametrize("log_every", [1, 5])
def test_divergence_in_a_recorded_step_names_the_epoch_and_step(device, log_every):
    """As the ordinary loop: poisoned weights after step 2 of epoch 3 make step 3 the first bad loss.
    (The replayed step reads the weights where they live, so the in-place poison reaches it.)"""
    X, y = classification_data(n=40, features=4)
    model = pn.mlp([4, 6, 3], seed=0).to(device)
    layer = model.layers[0]

    def poison(epoch, step, steps):
        if (epoch, step) == (3, 2):
            if device.backend.mutable:  # in place: the recorded step reads the weights where they live
                layer.params["weight"][...] = float("nan")
            else:  # rebound: the next step of a pure one reads the model's arrays
                layer.params["weight"] = layer.params["weight"] * float("nan")

    with pytest.raises(pn.train.DivergenceError) as error:
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=5, batch_size=10, shuffle=False, log_every=log_every,
               on_step=poison, graph=True)
    assert (error.value.epoch, error.value.step) == (3, 3)


def test_graph_refuses_what_it_cannot_replay():
    X, y = classification_data(n=30, features=4)
    model = pn.mlp([4, 6, 3], seed=0)
    before = model.state_dict()
    with pytest.raises(pn.InputError, match="graph=True needs an optimizer that does the same work every step"):
        pn.fit(model, X, y, optimizer=pn.Adam(0.01), epochs=1, graph=True)
    with pytest.raises(pn.InputError, match="graph=True cannot be combined with data-parallel training"):
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=1, graph=True, comm=object())
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


@pytest.mark.gpu
def test_cuda_graph_is_recorded_once_and_replayed(monkeypatch, dtype):
    """On CuPy the step is run once, recorded once, then replayed for every other full minibatch."""
    from conftest import make_device

    device = make_device("cuda")
    from portablenn.backends import cupy_kernels as backend_cupy

    steps = []
    original = backend_cupy._GraphStep

    class Spy(original):
        def __init__(self, *args):
            super().__init__(*args)
            steps.append(self)

        def _record(self):
            self.recorded = getattr(self, "recorded", 0) + 1
            graph = super()._record()
            self.built = graph is not None
            return graph

    monkeypatch.setattr(backend_cupy, "_GraphStep", Spy)
    X, y = classification_data(n=53, features=4)  # 5 full minibatches of 10 and one of 3 per epoch
    model = pn.mlp([4, 6, 3], dtype=dtype, seed=0).to(device)
    reference = pn.mlp([4, 6, 3], dtype=dtype, seed=0).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a refused recording fails here, saying why
        pn.fit(model, X, y, optimizer=pn.SGD(0.1), epochs=3, batch_size=10, graph=True)
    pn.fit(reference, X, y, optimizer=pn.SGD(0.1), epochs=3, batch_size=10)
    assert len(steps) == 1 and steps[0].built and steps[0].recorded == 1
    assert steps[0].graph is None and steps[0].handle is None  # released when fit ended
    assert_state_close(model.state_dict(), reference.state_dict(), dtype, factor=10)

