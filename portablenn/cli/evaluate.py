"""portablenn eval: loss, error and confusion matrix of a saved model on a split of its dataset."""
import json

import numpy as np

from ..datasets import registry
from ..train import evaluate, predict
from . import table
from .arguments import device, kernels_arg
from .errors import CLIError
from .model import load_saved


def add_parser(commands):
    ev = commands.add_parser("eval", help="loss, error and confusion matrix of a saved model")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--dataset", help="default: the dataset the checkpoint was trained on")
    ev.add_argument("--split", help="train | test (mnist) | a lines split | val (a file dataset's --val) "
                                    "(default: test, or train where it is the only split)")
    ev.add_argument("--data-dir")
    ev.add_argument("--no-download", action="store_true")
    ev.add_argument("--device", default="cpu")
    kernels_arg(ev)
    return ev


def run(args):
    dev = device(args)
    model, meta = load_saved(args.checkpoint, dev)
    dataset = args.dataset or meta.get("dataset")
    if not dataset:
        raise CLIError("the checkpoint does not name its dataset; pass --dataset")
    saved = json.loads(meta["train"]) if "train" in meta else {}
    val = saved.get("val") if not args.dataset and isinstance(saved, dict) else None  # the run's --val file
    splits = registry.load(dataset, args.data_dir, int(meta.get("seed", 0)), val, download=not args.no_download,
                          dtype=model.dtype)
    split = args.split
    if split is None:  # test where there is one, else the only split there is
        split = "test" if "test" in splits else ("train" if len(splits) == 1 else None)
        if split is None:
            raise CLIError(f"dataset {dataset} has no test split; choose one with --split: {', '.join(splits)}")
    elif split not in splits:
        raise CLIError(f"dataset {dataset} has no split {split!r}; choose one of {', '.join(splits)}")
    X, y = splits[split]
    loss, err = evaluate(model, X, y, device=dev)
    pred = predict(model, X, device=dev)
    classes = model.out_features
    confusion = np.bincount(np.asarray(y, dtype=np.int64) * classes + pred,
                            minlength=classes * classes).reshape(classes, classes)
    print(f"{dataset} {split}: {X.shape[0]} samples | loss {table.loss(loss)} | error {err:.5f} | "
          f"accuracy {100 * (1 - err):.2f}%")
    print("confusion matrix (rows: true class, columns: predicted):")
    width = max(len(str(confusion.max())), len(str(classes - 1))) + 1
    print(" " * (width + 1) + "".join(str(c).rjust(width) for c in range(classes)))
    for c in range(classes):
        print(str(c).rjust(width) + " " + "".join(str(v).rjust(width) for v in confusion[c]))
    return 0
