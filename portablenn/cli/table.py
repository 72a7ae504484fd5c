"""What the commands print as training goes: table rows, losses, progress bars."""
import contextlib
import sys


def row(cells, widths):
    return "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"


def loss(value):
    """A loss for the table: 5 decimals, or 4 significant digits in exponent form once it is huge."""
    return f"{value:.5f}" if abs(value) < 1e5 else f"{value:.4e}"


# a metric's column heading (after "Train "/"Val "), as History names it
HEADINGS = {"error": "Err", "rmse": "RMSE", "r2": "R2"}


def metric(name, value):
    """A metric for the table: an error rate with 5 decimals, RMSE and R^2 as losses (either may be huge)."""
    return f"{value:.5f}" if name == "error" else loss(value)


def lr(value):
    """A learning rate: 4 significant digits."""
    return f"{value:.4g}"


def summary(name, result, task):
    """The line after training for one split: loss and accuracy (classification, multi-label: of the labels),
    or loss, RMSE and R^2 (regression); ``result`` is evaluate's dict."""
    if task == "regression":
        return f"{name:>10s}: loss {loss(result['loss'])}  rmse {loss(result['rmse'])}  r2 {result['r2']:.5f}"
    return f"{name:>10s}: loss {loss(result['loss'])}  accuracy {100 * (1 - result['error']):.2f}%"


@contextlib.contextmanager
def progress(epochs, quiet):
    """tqdm bars for epochs and batches, or None where tqdm is missing, --quiet, or not a terminal."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or quiet or not sys.stderr.isatty():
        yield None, None
        return
    bar = tqdm(total=epochs, unit="epoch", dynamic_ncols=True, leave=False)
    batches = [None]

    def on_step(epoch, step, steps):
        if steps < 2:
            return
        if batches[0] is None or step == 1:
            if batches[0] is not None:
                batches[0].close()
            batches[0] = tqdm(total=steps, unit="batch", desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
        batches[0].update(1)
    try:
        yield bar, on_step
    finally:
        if batches[0] is not None:
            batches[0].close()
        bar.close()
