"""fit(graph=True), property test: for any setup the recorded static step (run eagerly on NumPy) equals
the ordinary loop bit for bit. Apart from ``test_graph.py`` so that only this skips without hypothesis."""
import numpy as np
import pytest

import portablenn as pn

from _support import classification_data

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 23), batch=st.integers(1, 23), shuffle=st.booleans(), l2=st.sampled_from([0.0, 1e-2]),
       momentum=st.sampled_from([0.0, 0.9]), activation=st.sampled_from(["relu", "tanh"]), bias=st.booleans(),
       log_every=st.integers(1, 3), epochs=st.integers(1, 4), seed=st.integers(0, 3))
def test_recorded_step_equals_the_ordinary_loop_for_any_setup(n, batch, shuffle, l2, momentum, activation, bias,
                                                              log_every, epochs, seed):
    """On NumPy the recorded step runs eagerly: for any size, minibatch (full, partial last, of one),
    shuffling, L2, momentum, layout and metric schedule, the weights and History equal the ordinary
    loop's bit for bit."""
    batch = min(batch, n)
    X, y = classification_data(n=n, features=3, seed=seed)
    results = []
    for graph in (False, True):
        model = pn.mlp([3, 4, 3], activation=activation, bias=bias, seed=seed)
        optimizer = pn.SGD(0.1, momentum=momentum)
        history = pn.fit(model, X, y, optimizer=optimizer, epochs=epochs, batch_size=batch, shuffle=shuffle,
                         l2=l2, seed=seed, log_every=log_every, graph=graph)
        results.append((model.state_dict(), [{k: v for k, v in r.items() if k != "seconds"} for r in history],
                        optimizer.steps))
    (state, records, steps), (reference, expected, expected_steps) = results[1], results[0]
    assert records == expected and steps == expected_steps
    for key in reference:
        np.testing.assert_array_equal(state[key], reference[key])
