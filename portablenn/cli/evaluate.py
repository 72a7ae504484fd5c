"""portablenn eval: a saved model on a split of its dataset: loss and error (with a confusion matrix) for
classification, loss, RMSE and R^2 for regression."""
import json

import numpy as np

from ..datasets import registry
from ..registry import LOSSES
from ..train import evaluate, predict
from . import table
from .arguments import device, kernels_arg
from .errors import CLIError
from .model import hold_out, load_saved, saved_loss


def add_parser(commands):
    ev = commands.add_parser("eval", help="loss and error (confusion matrix), or loss, RMSE and R^2, of a saved model")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--dataset", help="default: the dataset the checkpoint was trained on")
    ev.add_argument("--split", help="train | test (mnist) | a lines split | val (a file dataset's --val, or the rows "
                                    "--val-fraction held out) (default: test, or train where it is the only split)")
    ev.add_argument("--loss", choices=sorted(LOSSES),
                    help="default: the checkpoint's (softmax_cross_entropy where it does not say)")
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
    loss = saved_loss(args.loss, meta, args.checkpoint)
    saved = json.loads(meta["train"]) if "train" in meta else {}
    l2 = float(saved.get("l2") or 0.0) if isinstance(saved, dict) else 0.0  # checked when the checkpoint loaded
    saved = saved if isinstance(saved, dict) and not args.dataset else {}  # the run's own data, split as it was
    kind = registry.kind(dataset)
    if loss.task == "regression" and kind != "file":
        raise CLIError(f"--loss {LOSSES.name_of(loss)} is a regression loss, but {dataset} holds class labels")
    seed = int(meta.get("seed", 0))
    splits = registry.load(dataset, args.data_dir, seed, saved.get("val"), download=not args.no_download,
                           dtype=model.dtype, task=loss.task,
                           targets=model.out_features if loss.task != "classification" and kind == "file" else None)
    splits = hold_out(splits, saved.get("val_fraction"), seed, loss)
    split = args.split
    if split is None:  # test where there is one, else the only split there is
        split = "test" if "test" in splits else ("train" if len(splits) == 1 else None)
        if split is None:
            raise CLIError(f"dataset {dataset} has no test split; choose one with --split: {', '.join(splits)}")
    elif split not in splits:
        raise CLIError(f"dataset {dataset} has no split {split!r}; choose one of {', '.join(splits)}")
    X, y = splits[split]
    result = evaluate(model, X, y, device=dev, loss=loss, return_dict=True)
    where = f"{dataset} {split}: {X.shape[0]} samples | loss {table.loss(result['loss'])}"
    if l2:  # train's and sweep's tables add the L2 term of the run's --l2 to the loss they print
        penalised = evaluate(model, X, y, device=dev, loss=loss, l2=l2, return_dict=True)["loss"]
        where += f" ({table.loss(penalised)} with the L2 term of --l2 {l2:g}, as training reported it)"
    if loss.task == "regression":
        print(f"{where} | rmse {table.loss(result['rmse'])} | r2 {result['r2']:.5f}")
        if model.out_features > 1:  # each target's own figures
            values = predict(model, X, device=dev, loss=loss).astype(np.float64)
            truth = np.asarray(y, dtype=np.float64).reshape(values.shape)
            for k in range(model.out_features):
                sse = float(np.sum((values[:, k] - truth[:, k]) ** 2))
                sst = float(np.sum((truth[:, k] - truth[:, k].mean()) ** 2))
                r2 = f"{1 - sse / sst:.5f}" if sst else "undefined (constant target)"
                print(f"  target {k}: rmse {table.loss((sse / len(values)) ** 0.5)} | r2 {r2}")
        return 0
    print(f"{where} | error {result['error']:.5f} | accuracy {100 * (1 - result['error']):.2f}%"
          + (" (of the labels)" if loss.task == "multilabel" and model.out_features > 1 else ""))
    pred = predict(model, X, device=dev, loss=loss)
    if loss.task == "multilabel":
        truth = (np.asarray(y, dtype=np.float64).reshape(pred.shape) >= 0.5).astype(np.int64)
        if model.out_features > 1:
            errors = (pred != truth).mean(axis=0)
            print("error per label: " + " | ".join(f"{k}: {e:.5f}" for k, e in enumerate(errors)))
            return 0
        pred, y, classes = pred[:, 0], truth[:, 0], 2
    else:
        classes = model.out_features
    _confusion(np.asarray(y, dtype=np.int64), pred, classes)
    return 0


def _confusion(y, pred, classes):
    confusion = np.bincount(y * classes + pred, minlength=classes * classes).reshape(classes, classes)
    print("confusion matrix (rows: true class, columns: predicted):")
    width = max(len(str(confusion.max())), len(str(classes - 1))) + 1
    print(" " * (width + 1) + "".join(str(c).rjust(width) for c in range(classes)))
    for c in range(classes):
        print(str(c).rjust(width) + " " + "".join(str(v).rjust(width) for v in confusion[c]))
