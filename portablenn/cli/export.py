"""portablenn export: a saved model as ONNX, with the outputs of the task it was trained for."""
from .. import outputs
from .errors import CLIError
from .model import load_saved, saved_loss


def add_parser(commands):
    ex = commands.add_parser("export", help="write a saved model as ONNX (logits and probabilities, or the "
                                            "outputs of a regression model; needs portablenn[onnx])")
    ex.add_argument("checkpoint")
    ex.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    ex.add_argument("--overwrite", action="store_true", help="let --onnx replace a file portablenn did not write")
    return ex


def run(args):
    try:
        from ..onnx import export_onnx
        import ndonnx  # noqa: F401
    except ImportError:
        raise CLIError("ONNX export needs ndonnx and onnx: pip install 'portablenn[onnx]'") from None
    outputs.check(args.onnx, "onnx", flag="--onnx", overwrite=args.overwrite,
                  inputs=[(args.checkpoint, "the checkpoint")])
    outputs.prepare(args.onnx, flag="--onnx")
    model, meta = load_saved(args.checkpoint, "cpu")
    loss = saved_loss(None, meta, args.checkpoint)  # the recorded --loss; softmax cross-entropy in older files
    proto = export_onnx(model, args.onnx, loss=loss)  # replaces the file atomically
    names = ", ".join(output.name for output in proto.graph.output)
    print(f"wrote {args.onnx}: input (N, {model.in_features}) {model.dtype} -> {names} (N, {model.out_features})")
    return 0
