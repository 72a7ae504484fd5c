"""portablenn predict: what a saved model predicts for the rows of a .npy/.csv file: class indices and
probabilities (softmax cross-entropy), 0/1 labels and probabilities (binary cross-entropy), values (regression)."""
import io
import sys
from pathlib import Path

import numpy as np

from .. import outputs
from ..registry import LOSSES
from ..train import predict, predict_proba
from .arguments import device, kernels_arg
from .errors import CLIError
from .model import load_saved, saved_loss


def add_parser(commands):
    pr = commands.add_parser("predict", help="what a saved model predicts for the rows of a .npy/.csv file")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--input", required=True, help=".npy array (n, features) or .csv of features only")
    pr.add_argument("--output", help="'.npz' or '.csv', or '-' to print CSV (default: INPUT.predictions.npz): "
                                     "class indices and probabilities (softmax_cross_entropy; CSV header "
                                     "class,p0,...), 0/1 labels and probabilities (binary_cross_entropy; arrays "
                                     "labels, probabilities; header label0,...,p0,...), or values (regression; "
                                     "array values; header value0,...)")
    pr.add_argument("--loss", choices=sorted(LOSSES),
                    help="default: the checkpoint's (softmax_cross_entropy where it does not say)")
    pr.add_argument("--overwrite", action="store_true", help="let --output replace a file portablenn did not write")
    pr.add_argument("--device", default="cpu")
    kernels_arg(pr)
    return pr


def run(args):
    path = Path(args.input)
    if not path.is_file():
        raise CLIError(f"input file {path} does not exist")
    if args.output == "":  # --output "$OUT" with OUT unset: not the default name, which the user did not give
        raise CLIError("--output is empty: name a .npz or .csv file, or '-' for CSV on standard output")
    out = args.output if args.output is not None else str(path) + ".predictions.npz"
    if out != "-":
        kind = {".npz": "predictions-npz", ".csv": "predictions-csv"}.get(Path(out).suffix.lower())
        if kind is None:
            raise CLIError(f"--output {out}: name a .npz file (arrays of predictions) or a .csv file, "
                           "or '-' for CSV on standard output")
        outputs.check(out, kind, flag="--output", overwrite=args.overwrite,
                      inputs=[(args.input, "the --input file"), (args.checkpoint, "the --checkpoint")])
        outputs.prepare(out, flag="--output")
    model, meta = load_saved(args.checkpoint, device(args))
    loss = saved_loss(args.loss, meta, args.checkpoint)
    if path.suffix == ".npy":
        from ..datasets.files import load_npy

        X = load_npy(path)
    else:
        try:
            X = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
        except ValueError as exc:
            raise CLIError(f"cannot read {path} as numeric CSV: {exc}") from None
    k = model.out_features
    if loss.task == "classification":
        probs = predict_proba(model, X, device=args.device, loss=loss)
        arrays = {"classes": probs.argmax(axis=1), "probabilities": probs}
        header = ["class"] + [f"p{c}" for c in range(k)]
        rows = [[str(c)] + [f"{p:.6g}" for p in row] for c, row in zip(arrays["classes"], probs)]
    elif loss.task == "multilabel":
        labels = predict(model, X, device=args.device, loss=loss)  # 1 where the logit is positive
        probs = predict_proba(model, X, device=args.device, loss=loss)
        arrays = {"labels": labels, "probabilities": probs}
        header = [f"label{c}" for c in range(k)] + [f"p{c}" for c in range(k)]
        rows = [[str(v) for v in a] + [f"{p:.6g}" for p in b] for a, b in zip(labels, probs)]
    else:
        values = predict(model, X, device=args.device, loss=loss)
        arrays = {"values": values}
        header = [f"value{c}" for c in range(k)]
        digits = 17 if values.dtype == np.float64 else 9  # enough to read back the same float
        rows = [[f"{v:.{digits}g}" for v in row] for row in values]
    if out == "-" or out.lower().endswith(".csv"):
        lines = [",".join(header)] + [",".join(row) for row in rows]
        if out == "-":
            print("\n".join(lines))
            return 0
        data = ("\n".join(lines) + "\n").encode()
    else:
        buffer = io.BytesIO()  # written under the name given (np.savez would append .npz to another name)
        np.savez(buffer, **arrays)
        data = buffer.getvalue()
    outputs.atomic_write(out, data, "predictions")
    print(f"{X.shape[0]} predictions -> {out}", file=sys.stderr)
    return 0
