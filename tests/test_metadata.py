"""Untrusted metadata is validated (issue #15, principle 7): a checkpoint's metadata is input. Each field of a
checkpoint written by ``portablenn train`` is mutated (wrong type, missing, negative, huge, NaN, nested garbage,
not JSON) and re-signed with a matching checksum, as a hostile or buggy writer would; every door then gives the
documented CheckpointError (API: ``load_checkpoint``, ``portablenn.load``, ``restore_optimizer``) or one line and
exit 2 (CLI: ``eval --checkpoint``, ``train --resume``, ``predict --checkpoint``, ``export``), never a KeyError,
TypeError, IndexError or a ValueError from deep inside. Random mutations: ``test_fuzz.py``."""
import json

import numpy as np
import pytest

pytest.importorskip("safetensors")

import portablenn as pn
from portablenn import checkpoint, cli
from portablenn.checkpoint import CheckpointError

class _Missing:
    def __repr__(self):
        return "missing"

    __str__ = __repr__


MISSING = _Missing()
NAN, INF = float("nan"), float("inf")
DEEP = "[" * 100_000  # json: RecursionError
NESTED = "[" * 3000 + "]" * 3000  # valid JSON, nested beyond Python's recursion limit


def top(key, value):
    """Set the raw text of a metadata entry (MISSING removes it)."""
    def change(meta, tensors):
        if value is MISSING:
            meta.pop(key, None)
        else:
            meta[key] = value
    return change


def whole(key, value):
    """Replace a JSON metadata entry by ``value`` encoded as JSON (NaN and Infinity as Python writes them)."""
    return top(key, json.dumps(value))


def field(key, name, value):
    """Set (MISSING: remove) field ``name`` of the JSON object in metadata entry ``key``."""
    def change(meta, tensors):
        data = json.loads(meta[key])
        if value is MISSING:
            data.pop(name, None)
        else:
            data[name] = value
        meta[key] = json.dumps(data)
    return change


def fields(key, **values):
    def change(meta, tensors):
        for name, value in values.items():
            field(key, name, value)(meta, tensors)
    return change


def tensor(key, value):
    def change(meta, tensors):
        if value is MISSING:
            tensors.pop(key)
        else:
            tensors[key] = value
    return change


def linear(i, o, bias=True):
    return {"type": "Linear", "in_features": i, "out_features": o, "bias": bias}


RELU = {"type": "ReLU"}
API = ("load_checkpoint", "load", "restore")
CLI = ("eval", "resume", "predict", "export")
ALL = API + CLI

# (id, mutation, the doors that must refuse it: all others must still work)
CASES = []


def case(name, change, doors=ALL):
    CASES.append(pytest.param(change, doors, id=name))


for value in (MISSING, "abc", "-1", "1.0", "", "9" * 5000, " 1", "2"):
    case(f"format_version={str(value)[:12]!r}", top("format_version", value))
for value in (MISSING, "float16", "", "int8", "Float32", "float32 "):
    case(f"dtype={str(value)[:12]!r}", top("dtype", value))
for value in (MISSING, "{not json", DEEP, NESTED, "null", "42", '"relu"', "[]", "{}", "true"):
    case(f"architecture={str(value)[:12]!r}", top("architecture", value))
for value in (MISSING, "784", [], [2], [2, -8, 3], [2, 0, 3], [2, 8.5, 3], [2, True, 3], [2, "8", 3], [2, INF, 3],
              [2, NAN, 3], [2, 10**9, 3], [2, 2**64, 3], [[2], 8, 3], {"a": 1}, None, [2, 8, 3, 4], [2, 8],
              [3, 8, 3], [2] * 20_000):
    case(f"architecture.sizes={str(value)[:16]}", field("architecture", "sizes", value))
for value in ("mish", 3, None, ["relu"], "", "RELU"):
    case(f"architecture.activation={value!r}", field("architecture", "activation", value))
for value in ("yes", 1, None, False):
    case(f"architecture.bias={value!r}", field("architecture", "bias", value))
case("architecture.init (unknown entry)", field("architecture", "init", "he"))
case("architecture.dtype (unknown entry)", field("architecture", "dtype", "float64"))
for name, layers in [
    ("not a dict", [[1, 2]]), ("unknown type", [{"type": "Conv"}]), ("no Linear", [RELU]),
    ("Linear without bias", [{"type": "Linear", "in_features": 2, "out_features": 8}, RELU, linear(8, 3)]),
    ("in_features '2'", [linear("2", 8), RELU, linear(8, 3)]), ("in_features -2", [linear(-2, 8), RELU, linear(8, 3)]),
    ("out_features 10^9", [linear(2, 10**9), RELU, linear(10**9, 3)]), ("bias 'yes'", [linear(2, 8, "yes"), RELU,
                                                                                     linear(8, 3)]),
    ("ReLU with an entry", [linear(2, 8), {"type": "ReLU", "inplace": True}, linear(8, 3)]),
    ("layers that do not chain", [linear(2, 8), RELU, linear(5, 3)]), ("type null", [{"type": None}]),
    ("one layer too many", [linear(2, 8), RELU, linear(8, 3), RELU, linear(3, 3)]), ("empty", []),
]:
    case(f"architecture layers: {name}", whole("architecture", layers))
for value in ("{bad", DEEP, NESTED, "[]", "null", '"SGD"', "5"):
    case(f"optimizer={value[:12]!r}", top("optimizer", value))
case("optimizer missing", top("optimizer", MISSING), ("restore", "resume"))
for value in (MISSING, 5, "", "Bad Name!", None, ["SGD"]):
    case(f"optimizer.class={str(value)[:12]!r}", field("optimizer", "class", value))
case("optimizer.class='Adam' (another optimizer)", field("optimizer", "class", "Adam"), ("restore", "resume"))
case("optimizer.class='Lion' (unknown optimizer)", field("optimizer", "class", "Lion"), ("restore", "resume"))
for value in (MISSING, "0.1", -0.1, 0, NAN, INF, -INF, [0.1], {"v": 0.1}, True, None):
    case(f"optimizer.lr={str(value)[:12]}", field("optimizer", "lr", value))
for value in (-0.5, 1.0, 5, NAN, "0.9", None, [0.9]):
    case(f"optimizer.momentum={value!r}", field("optimizer", "momentum", value))
for value in ("yes", 1, None, [True]):
    case(f"optimizer.nesterov={value!r}", field("optimizer", "nesterov", value))
case("optimizer.nesterov without momentum", fields("optimizer", nesterov=True, momentum=0.0))
for value in (MISSING, -1, 1.5, "10", 2**64, NAN, True, None, [1]):
    case(f"optimizer.steps={str(value)[:12]}", field("optimizer", "steps", value))
for value in (-1, NAN, "0", INF, None):
    case(f"optimizer.l2={value!r}", field("optimizer", "l2", value))
for name, value in (("beta1", 1.5), ("beta2", -0.1), ("eps", 0), ("eps", NAN), ("beta1", "0.9")):
    case(f"optimizer.{name}={value!r}", field("optimizer", name, value))
for value in ([1, 2], NAN, {"a": {"b": []}}, "text", None):
    case(f"optimizer.foo={str(value)[:12]}", field("optimizer", "foo", value))
for value in ("-1", "abc", "1.5", "9" * 30, "", "NaN", "1e3", " 3", "[1]"):
    case(f"epoch={value[:12]!r}", top("epoch", value))
for value in ("-3", "x", "1e3", "9" * 25, "", "null"):
    case(f"seed={value[:12]!r}", top("seed", value))
for value in ("", "\x00", "a\nb", "x" * 5000):
    case(f"dataset={value[:12]!r}", top("dataset", value))
case("dataset missing", top("dataset", MISSING), ("eval",))
case("dataset unknown", top("dataset", "imagenet"), ("eval",))
case("train missing", top("train", MISSING), ("resume",))
for value in ("{bad", DEEP, NESTED, "[]", "5", "null", '"x"'):
    case(f"train={value[:12]!r}", top("train", value))
for name, values in {
    "dataset": (MISSING, 5, "", None, ["spiral"], "a\x00b"),
    "seed": (MISSING, -1, "0", 1.5, 2**70, None, NAN),
    "lr": (MISSING, 0, -1, NAN, INF, "0.1", None),
    "l2": (MISSING, -1, NAN, "x", None),
    "batch_size": (MISSING, -1, 1.5, "100", 2**40, None),
    "shuffle": (MISSING, "yes", 1, None),
    "epochs": (MISSING, -1, 2**40, "10", 1.5, None),
    "log_every": (MISSING, 0, -1, "1", None),
    "val": (5, "", ["a"], {"x": 1}),
    "init": (5, "", ["he"], {"a": 1}),
}.items():
    for value in values:
        case(f"train.{name}={str(value)[:12]}", field("train", name, value))
for name, values in {  # portablenn train's options of issue #18: absent in older files, checked where present
    "loss": (5, "", "hinge", ["mse"], {"a": 1}),
    "targets": (0, -1, 1.5, "2", 2**40, True),
    "clip_grad": (0, -1, NAN, INF, "1", [1]),
    "val_fraction": (0, 1, 1.5, -0.1, NAN, "0.2"),
    "early_stopping": (5, "loss", [], {"monitor": "loss"}, {"monitor": "", "patience": 1, "min_delta": 0},
                       {"monitor": "loss", "patience": 0, "min_delta": 0},
                       {"monitor": "loss", "patience": 1, "min_delta": NAN}),
    "early_stopping_state": (5, [], {"best": 1.0}, {"best": NAN, "best_epoch": 1, "wait": 0, "stopped_epoch": None},
                             {"best": 1.0, "best_epoch": -1, "wait": 0, "stopped_epoch": None}),
    "first_best": (5, [], {"epoch": 1}, {"epoch": 0, "error": 0.5}, {"epoch": 1, "error": NAN},
                   {"epoch": 1, "error": "0.5"}, {"epoch": "1", "error": 0.5}, {"epoch": 1, "loss": 0.5},
                   {"epoch": 1, "error": 0.5, "rmse": 1.0}, {"epoch": 2**40, "error": 0.5}),
}.items():
    for value in values:
        case(f"train.{name}={str(value)[:12]}", field("train", name, value))
# a valid loss that does not fit the model or the data: refused where it is used
case("train.loss=mse (a regression loss on the spiral's classifier)", field("train", "loss", "mse"), ("eval", "resume"))
case("train.targets=2 (for a classifier)", field("train", "targets", 2), ())
case("train.early_stopping without validation data",
     field("train", "early_stopping", {"monitor": "val_loss", "patience": 2, "min_delta": 0.0}), ("resume",))
case("train.early_stopping_state without the best weights", fields(
    "train", early_stopping={"monitor": "loss", "patience": 2, "min_delta": 0.0},
    early_stopping_state={"best": 1.0, "best_epoch": 1, "wait": 0, "stopped_epoch": None}), ("resume",))
for value in (MISSING, "0" * 64, "", "x"):
    case(f"sha256={str(value)[:12]!r}", top("sha256", value))
for name, change in [
    ("0.weight int32", tensor("0.weight", np.zeros((2, 8), np.int32))),
    ("0.weight bool", tensor("0.weight", np.zeros((2, 8), bool))),
    ("0.bias missing", tensor("0.bias", MISSING)),
    ("0.weight transposed", tensor("0.weight", np.zeros((8, 2), np.float32))),
    ("0.weight 3-D", tensor("0.weight", np.zeros((2, 8, 1), np.float32))),
    ("an extra parameter 9.weight", tensor("9.weight", np.zeros((3, 3), np.float32))),
    ("a parameter named with a superscript digit", tensor("\u00b2.weight", np.zeros((3, 3), np.float32))),
    ("a parameter index of 5000 digits", tensor("9" * 5000 + ".weight", np.zeros((3, 3), np.float32))),
    ("an optimizer buffer named with a superscript", tensor("optim.0.weight.\u00b2", np.zeros((2, 8), np.float32))),
    ("optimizer buffer int", tensor("optim.0.weight.0", np.zeros((2, 8), np.int64))),
    ("optimizer buffer name optim.0.weight.x", tensor("optim.0.weight.x", np.zeros((2, 8), np.float32))),
    ("optimizer buffer index 10^12", tensor("optim.0.weight.1000000000000", np.zeros((2, 8), np.float32))),
    ("optimizer buffer 1 without 0", lambda m, t: t.update({"optim.0.weight.1": t.pop("optim.0.weight.0")})),
]:
    case(f"tensor: {name}", change)
for name, change in [
    ("optimizer state of an unknown parameter", tensor("optim.7.weight.0", np.zeros((3, 3), np.float32))),
    ("optimizer buffer of the wrong shape", tensor("optim.0.weight.0", np.zeros((8, 2), np.float32))),
    ("two momentum buffers", tensor("optim.0.weight.1", np.zeros((2, 8), np.float32))),
]:
    case(f"tensor: {name}", change, ("restore", "resume"))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A checkpoint as ``portablenn train --save`` writes it (SGD with momentum state), and its parts."""
    directory = tmp_path_factory.mktemp("written")
    path = directory / "run.safetensors"
    assert cli.main(["train", "--epochs", "1", "--hidden", "8", "--momentum", "0.9", "--save", str(path),
                     "--quiet"]) == 0
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        meta = dict(fh.metadata())
    assert {"dataset", "epoch", "seed", "train", "optimizer"} <= set(meta) and "optim.0.weight.0" in tensors
    np.save(directory / "x.npy", np.zeros((4, 2), np.float32))
    return meta, tensors, directory / "x.npy"


def _write(path, meta, tensors):
    import safetensors.numpy

    meta = {k: v for k, v in meta.items()}
    if "sha256" in meta and meta["sha256"] == "sign":
        meta["sha256"] = checkpoint._digest(tensors, meta)
    path.write_bytes(safetensors.numpy.save(tensors, metadata=meta))


def _mutated(written, tmp_path, change):
    meta, tensors, _ = written
    meta, tensors = dict(meta), dict(tensors)
    meta["sha256"] = "sign"  # re-signed after the change, unless the change is to the checksum itself
    change(meta, tensors)
    path = tmp_path / "m.safetensors"
    _write(path, meta, tensors)
    return path


def _door(door, path, x, tmp_path, capsys):
    """Run ``door`` on ``path``: None if it worked, else the refusal (one line, checked)."""
    if door in API:
        try:
            if door == "load_checkpoint":
                checkpoint.load_checkpoint(path)
            elif door == "load":
                pn.load(path)
            else:
                checkpoint.restore_optimizer(pn.SGD(0.1, momentum=0.9), path, pn.mlp([2, 8, 3]))
        except CheckpointError as exc:
            return str(exc)
        return None
    argv = {"eval": ["eval", "--checkpoint", str(path)],
            "resume": ["train", "--resume", str(path), "--epochs", "1", "--quiet"],
            "predict": ["predict", "--checkpoint", str(path), "--input", str(x), "--output", "-"],
            "export": ["export", str(path), "--onnx", str(tmp_path / f"m{len(list(tmp_path.iterdir()))}.onnx")]}[door]
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    if code == 0:
        return None
    assert code == 2, (door, code, err)
    assert len(err) == 1 and err[0].startswith("portablenn: error:"), (door, err)
    return err[0]


def test_the_written_checkpoint_passes_every_door(written, tmp_path, capsys):
    pytest.importorskip("ndonnx")
    path = _mutated(written, tmp_path, lambda meta, tensors: None)
    for door in ALL:
        assert _door(door, path, written[2], tmp_path, capsys) is None, door


@pytest.mark.parametrize("change, doors", CASES)
def test_mutated_metadata_is_refused_at_every_door(written, tmp_path, capsys, change, doors):
    path = _mutated(written, tmp_path, change)
    for door in ALL:
        if door == "export" and "export" not in doors:
            continue  # tracing to ONNX works as the other doors do; once is enough (the test above)
        if door == "export":
            pytest.importorskip("ndonnx")
        refusal = _door(door, path, written[2], tmp_path, capsys)
        if door in doors:
            assert refusal is not None, f"{door} accepted it"
        else:
            assert refusal is None, (door, refusal)


def test_every_field_is_mutated(written):
    """The table covers each metadata entry the checkpoint holds, and each field inside the JSON ones."""
    meta = written[0]
    names = " ".join(p.id for p in CASES)
    for key in meta:
        if key != "portablenn_version":  # informational: never read back
            assert f"{key}=" in names or f"{key} missing" in names, key
    for key in ("architecture", "optimizer", "train"):
        for name in json.loads(meta[key]):
            assert f"{key}.{name}=" in names, (key, name)


def test_a_hand_made_checkpoint_object_is_checked_too():
    """restore_optimizer takes a Checkpoint, which a caller may build or change: still CheckpointError."""
    model = pn.mlp([2, 8, 3])
    for config, state in [({"class": "SGD", "lr": "x", "steps": 0}, {}), ("SGD", {}),
                          ({"class": "SGD", "lr": 0.1, "steps": -5}, {}),
                          ({"class": "SGD", "lr": 0.1, "steps": 0}, {"0.weight": "not arrays"}),
                          ({"class": "SGD", "lr": 0.1, "steps": 0}, [1, 2])]:
        ckpt = checkpoint.Checkpoint(model.state_dict(), {}, state, config, {})
        with pytest.raises(CheckpointError):
            checkpoint.restore_optimizer(pn.SGD(0.1, momentum=0.9), ckpt, model)
