"""A scikit-learn estimator, ``MLPClassifier``, that trains with portablenn on the device its input lives on."""
import warnings

import numpy as np
from array_api_compat import (array_namespace, is_array_api_obj, is_array_api_strict_namespace, is_cupy_array,
                              is_numpy_array, is_torch_array)

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.metrics import accuracy_score
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_consistent_length, check_is_fitted, column_or_1d
    from sklearn.utils.validation import validate_data as _validate_data  # scikit-learn >= 1.6
except ImportError as exc:
    raise ImportError(f"portablenn.sklearn needs scikit-learn >= 1.6 (pip install 'portablenn[sklearn]'): {exc}"
                      ) from exc

from . import backend
from .losses import softmax
from .models import mlp
from .optim import SGD, Adam
from .train import fit
from .validation import check_features, check_range

__all__ = ["MLPClassifier"]

_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "logistic": "sigmoid", "identity": "identity"}
_CHUNK = 8192  # rows per forward pass when predicting, to bound activation memory


class MLPClassifier(ClassifierMixin, BaseEstimator):
    """Multi-layer perceptron classifier with scikit-learn's API, trained by ``portablenn.fit``.

    Parameter names and defaults follow ``sklearn.neural_network.MLPClassifier`` where it has the
    same parameter. The network is ``portablenn.mlp([n_features, *hidden_layer_sizes, n_classes])``
    trained on softmax cross-entropy for exactly ``max_iter`` epochs (no early stopping, no
    ``tol``).

    *Array in, array out*: given a CuPy, PyTorch or array-api-strict array, ``fit`` trains on that
    array's device and ``predict``/``predict_proba`` return arrays of the input's namespace on the
    input's device. NumPy (and anything else scikit-learn accepts: lists, DataFrames) is validated
    with scikit-learn's own helpers, trained on ``device`` and answered with NumPy arrays.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(100,)
        Width of each hidden layer; ``()`` is a linear softmax classifier.
    activation : {"relu", "tanh", "sigmoid", "logistic", "identity"}, default="relu"
        ``"logistic"`` is scikit-learn's name for the sigmoid; ``"identity"`` makes a linear model.
    solver : {"adam", "sgd"}, default="adam"
    alpha : float, default=0.0001
        L2 strength: ``0.5 * alpha * sum(W ** 2)`` is added to the *mean* minibatch loss
        (portablenn's ``l2``; scikit-learn divides its ``alpha`` term by the batch size instead).
    batch_size : int or "auto", default="auto"
        ``"auto"`` is ``min(200, n_samples)``; an int outside ``[1, n_samples]`` is clipped with a
        warning, as scikit-learn does.
    learning_rate_init : float, default=0.001
    max_iter : int, default=200
        Epochs.
    shuffle : bool, default=True
        Reshuffle the samples every epoch.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights and the shuffling.
    momentum : float, default=0.9
        For ``solver="sgd"``.
    nesterovs_momentum : bool, default=True
        For ``solver="sgd"`` with ``momentum > 0``.
    beta_1, beta_2, epsilon : float, default=0.9, 0.999, 1e-8
        For ``solver="adam"``.
    device : str, default="auto"
        Where NumPy input is trained and predicted (``"cpu"``, ``"cuda:0"``, ... see
        ``portablenn.device``). Ignored for CuPy, PyTorch and array-api-strict input, which uses
        the input's own device.
    dtype : {"float32", "float64"}, default="float32"
        Dtype of the parameters and of ``predict_proba``'s output.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The sorted class labels, always a host NumPy array.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when fitted on a DataFrame with string column names.
    n_iter_ : int
        Epochs run (``max_iter``).
    loss_curve_ : list of float
        Mean training loss (with the L2 term) of each epoch.
    model_ : portablenn.Sequential
        The trained network; it stays on the device it last ran on.
    device_ : str
        Name of the device ``fit`` trained on, e.g. ``"numpy"`` or ``"torch:cpu"``.

    Notes
    -----
    Labels may be any values ``np.unique`` can sort (ints, floats, strings, ...). They are
    encoded on the host, so ``y`` may come from any namespace. For non-NumPy input ``predict``
    returns labels on the input's device through ``xp.take`` on the numeric class values; string
    (or other non-numeric) classes cannot live in such an array, so ``predict`` raises a
    ``ValueError`` there: use ``classes_[argmax(predict_proba(X))]`` on the host instead.
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate_init=0.001, max_iter=200, shuffle=True, random_state=None,
                 momentum=0.9, nesterovs_momentum=True, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 device="auto", dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.device = device
        self.dtype = dtype

    # -- scikit-learn API ----------------------------------------------------------------------
    def fit(self, X, y):
        """Train a fresh network on ``X``, ``y`` for ``max_iter`` epochs.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
            NumPy or anything scikit-learn accepts; or a CuPy, PyTorch or array-api-strict array,
            which is trained on its own device.
        y : array of shape (n_samples,)
            Class labels of any sortable type, from any namespace.

        Returns
        -------
        self
        """
        hidden, activation = self._check_params()
        spec = _input_device(X)
        if spec is None:
            X, y = _validate_data(self, X, y, dtype=(np.float64, np.float32))
            dev = backend.device(self.device)
        else:
            _validate_data(self, X, skip_check_array=True)
            check_features(X)
            if y is None:
                raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
            y = column_or_1d(backend._host(y), warn=True)
            check_consistent_length(X, y)
            dev = backend.device(spec)
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        n, batch = X.shape[0], self._batch(X.shape[0])
        rng = check_random_state(self.random_state)
        init_seed, shuffle_seed = (int(s) for s in rng.randint(np.iinfo(np.int32).max, size=2))
        model = mlp([self.n_features_in_, *hidden, len(self.classes_)], activation=activation,
                    seed=init_seed, dtype=self.dtype)
        history = fit(model, X, encoded.reshape(n), optimizer=self._optimizer(), epochs=self.max_iter,
                      batch_size=batch, shuffle=bool(self.shuffle), l2=self.alpha, device=dev, seed=shuffle_seed,
                      log_every=self.max_iter)
        self.model_, self.device_ = model, dev.name
        self.n_iter_, self.loss_curve_ = len(history), list(history["loss"])
        return self

    def predict_proba(self, X):
        """Class probabilities (softmax of the logits).

        Parameters
        ----------
        X : array of shape (n_samples, n_features)

        Returns
        -------
        array of shape (n_samples, n_classes)
            NumPy for NumPy input, else in ``X``'s namespace on ``X``'s device; columns follow
            ``classes_``.
        """
        dev, _, logits, host = self._logits(X)
        proba = softmax(logits)
        return dev.to_numpy(proba) if host else proba

    def predict(self, X):
        """Class labels of the largest logit.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)

        Returns
        -------
        array of shape (n_samples,)
            Values of ``classes_``: NumPy for NumPy input, else in ``X``'s namespace on ``X``'s device.

        Raises
        ------
        ValueError
            For non-NumPy input when ``classes_`` is not numeric (e.g. strings).
        """
        dev, xp, logits, host = self._logits(X)
        index = xp.argmax(logits, axis=1)
        if host:
            return self.classes_[dev.to_numpy(index)]
        if self.classes_.dtype.kind not in "biuf":
            raise ValueError(f"cannot return labels of dtype {self.classes_.dtype} as {dev.library} arrays; "
                             "fit with numeric labels, or take classes_[argmax(predict_proba(X))] on the host")
        return xp.take(dev.asarray(self.classes_), index, axis=0)

    def score(self, X, y, sample_weight=None):
        """Mean accuracy of the predicted labels against ``y``, compared on the host (any namespace, any labels)."""
        dev, xp, logits, _ = self._logits(X)
        pred = self.classes_[dev.to_numpy(xp.argmax(logits, axis=1))]
        if sample_weight is not None:
            sample_weight = backend._host(sample_weight)
        return accuracy_score(column_or_1d(backend._host(y)), pred, sample_weight=sample_weight)

    # -- pickling: the network holds modules (the array namespace), so store its weights ----------
    def __getstate__(self):
        state = dict(super().__getstate__())  # object.__getstate__ may return __dict__ itself
        model = state.pop("model_", None)
        if model is not None:
            state["_model_state"] = (dict(model.config), model.dtype, model.state_dict())
        return state

    def __setstate__(self, state):
        saved = state.pop("_model_state", None)
        if saved is not None:  # rebuilt on the CPU; predict moves it where its input is
            config, dtype, weights = saved
            state["model_"] = mlp(config["sizes"], activation=config["activation"], bias=config["bias"],
                                  dtype=dtype).load_state_dict(weights)
        super().__setstate__(state)

    # -- helpers -------------------------------------------------------------------------------
    def _check_params(self):
        """Validate the hyper-parameters; returns (hidden sizes as a list, portablenn activation name)."""
        hidden = self.hidden_layer_sizes
        hidden = [hidden] if isinstance(hidden, (int, np.integer)) else list(hidden)
        if not all(isinstance(h, (int, np.integer)) and not isinstance(h, bool) and h >= 1 for h in hidden):
            raise ValueError(f"hidden_layer_sizes must hold positive integers, got {self.hidden_layer_sizes!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {self.activation!r}")
        if self.solver not in ("adam", "sgd"):
            raise ValueError(f"solver must be 'adam' or 'sgd', got {self.solver!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (isinstance(self.batch_size, (int, np.integer)) and not isinstance(self.batch_size, bool)
                or self.batch_size == "auto"):
            raise ValueError(f"batch_size must be a positive integer or 'auto', got {self.batch_size!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        return [int(h) for h in hidden], _ACTIVATIONS[self.activation]

    def _batch(self, n):
        if self.batch_size == "auto":
            return min(200, n)
        if not 1 <= self.batch_size <= n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
        return int(np.clip(self.batch_size, 1, n))

    def _optimizer(self):
        if self.solver == "adam":
            return Adam(self.learning_rate_init, self.beta_1, self.beta_2, self.epsilon)
        return SGD(self.learning_rate_init, momentum=self.momentum,
                   nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)

    def _logits(self, X):
        """Validate ``X`` and move the model to its device; returns (Device, xp, logits, whether X is host data)."""
        check_is_fitted(self)
        spec = _input_device(X)
        if spec is None:
            X = _validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
            check_range(X, self.model_.dtype)
            dev = backend.device(self.device)
        else:
            _validate_data(self, X, skip_check_array=True, reset=False)
            check_features(X, self.n_features_in_, dtype=self.model_.dtype)
            dev = backend.device(spec)
        model = self.model_.to(dev)
        xp, n = dev.xp, X.shape[0]
        with dev.activate():
            Xd = dev.asarray(X, dtype=model.dtype) if spec is None else xp.astype(X, dev.dtype(model.dtype))
            parts = [model.forward(Xd[s:min(s + _CHUNK, n), :]) for s in range(0, n, _CHUNK)]
            return dev, xp, parts[0] if len(parts) == 1 else xp.concat(parts, axis=0), spec is None


def _input_device(X):
    """The portablenn device spec of a CuPy, PyTorch or array-api-strict array; None for NumPy and array-likes.

    Raises
    ------
    ValueError
        For an Array API array of another library.
    """
    if isinstance(X, np.ndarray) or is_numpy_array(X) or not is_array_api_obj(X):
        return None
    if is_cupy_array(X):
        return f"cuda:{X.device.id}"
    if is_torch_array(X):
        where = X.device
        return "torch:cpu" if where.type == "cpu" else f"torch:{where.type}:{where.index or 0}"
    if is_array_api_strict_namespace(array_namespace(X)):
        return f"array_api_strict:{X.device._device}"
    raise ValueError(f"cannot train on {type(X).__module__}.{type(X).__name__} arrays; "
                     "pass NumPy, CuPy, PyTorch or array-api-strict arrays")
