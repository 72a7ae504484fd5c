"""No allocation that grows with the number of steps: memory after many epochs equals memory after one."""
import gc
import tracemalloc

import numpy as np
import pytest

import portablenn as pn


@pytest.mark.parametrize("optimizer, graph", [(lambda: pn.SGD(0.1), False), (lambda: pn.SGD(0.1, momentum=0.9), False),
                                              (lambda: pn.Adam(1e-3), False), (lambda: pn.SGD(0.1, momentum=0.9), True)],
                         ids=["sgd", "momentum", "adam", "momentum-graph"])
@pytest.mark.parametrize("spec", ["numpy", "array_api_strict:device1"])
def test_training_memory_does_not_grow_with_steps(spec, optimizer, graph):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 64)).astype(np.float32)
    y = rng.integers(0, 10, 2000)
    model, opt = pn.mlp([64, 128, 10]), optimizer()
    pn.fit(model, X, y, optimizer=opt, epochs=1, batch_size=50, device=spec, graph=graph)  # warm: buffers, caches
    tracemalloc.start()
    try:
        traced = []
        for first, last in [(1, 4), (4, 14), (14, 24)]:
            pn.fit(model, X, y, optimizer=opt, epochs=last, batch_size=50, initial_epoch=first, graph=graph)
            gc.collect()
            traced.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    # 400 more steps between the last two readings: anything kept per step (>= 4 bytes) would show
    assert traced[2] - traced[1] < 1600, traced
