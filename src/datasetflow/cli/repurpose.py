"""``datasetflow repurpose``: flow a dataset to a frozen classifier's domain and score it before and after.

The work is :func:`datasetflow.models.repurpose`; this module loads the data and the classifier,
drives a progress bar and writes the outputs:

* ``DIR/result.json``: accuracy before and after, the accuracy curve, the objective per step, the
  class matchings and the settings;
* ``DIR/final.npz``: the flowed samples (``x`` in the source's feature shape, ``y``, ``classes``);
* ``DIR/images.png`` (samples over time, one column per record), ``DIR/objective.png`` and
  ``DIR/accuracy.png`` when matplotlib is installed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import (
    describe,
    jsonable,
    load_datasets,
    progress_callback,
    write_final_npz,
    write_json_atomic,
)

__all__ = ["run_repurpose_command", "load_classifier", "register"]


def _error(message: str) -> Exception:
    from ..errors import InvalidArgumentError

    return InvalidArgumentError(message)


def load_classifier(spec: str | None, target: Any, device: Any) -> Any:
    """The frozen classifier: the embedded MNIST LeNet-5 ensemble (``spec=None``) or a LeNet-5 state dict file."""
    import torch

    from ..models import MNIST_CLASSES, FrozenClassifier, LeNet5, pretrained_mnist_lenet5

    if spec is None:
        if target.feature_shape != (28, 28) or tuple(str(c) for c in target.classes) != MNIST_CLASSES:
            raise _error(
                "the embedded classifier is an MNIST LeNet-5 (28x28 images, classes '0'..'9'); TARGET has feature "
                f"shape {target.feature_shape} and classes {list(target.classes)[:10]}. Give --classifier FILE.pt, "
                "a LeNet5 state dict trained on TARGET's classes."
            )
        return pretrained_mnist_lenet5(device)
    path = Path(spec)
    if not path.is_file():
        raise _error(f"--classifier {spec!r}: no such file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported in one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unpickler" in str(exc):
            reason = "it holds Python objects other than tensors (only a plain state dict is loaded, for safety)"
        raise _error(f"--classifier {spec!r} is not a readable LeNet5 state dict: {reason}.") from None
    if not isinstance(state, dict):
        raise _error(f"--classifier {spec!r} holds a {type(state).__name__}, not a state dict.")
    model = LeNet5.for_feature_shape(target.feature_shape, target.num_classes)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).splitlines()[0]
        raise _error(
            f"--classifier {spec!r} is not a LeNet5 state dict for {target.num_classes} classes and images "
            f"{target.feature_shape}: {first}"
        ) from None
    return FrozenClassifier(model.to(device))


def _figures(result: Any, out: Path, warn: Callable[[str], None]) -> list[str]:
    try:
        from matplotlib.figure import Figure

        from ..viz import image_grid, plot_objective
    except ImportError as exc:
        warn(f"figures skipped: {exc}; pip install 'datasetflow[viz]'.")
        return []
    written = []
    flow = result.flow
    if flow.trajectory is not None and len(flow.final.feature_shape) >= 2:
        image_grid(flow, path=out / "images.png", per_class=2, title="samples over the flow (columns: steps)")
        written.append("images.png")
    plot_objective(flow, path=out / "objective.png")
    written.append("objective.png")
    if result.curve:
        fig = Figure(figsize=(5.2, 3.4))
        ax = fig.add_subplot(1, 1, 1)
        steps, acc = zip(*result.curve, strict=True)
        ax.plot(steps, [100 * a for a in acc], marker="o")
        ax.set_xlabel("flow step")
        ax.set_ylabel("frozen classifier accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        fig.savefig(out / "accuracy.png", dpi=110, bbox_inches="tight")
        written.append("accuracy.png")
    return written


def run_repurpose_command(params: dict[str, Any], *, warn: Callable[[str], None]) -> list[str]:
    """Run the command; returns the summary lines."""

    from ..models import repurpose

    out = Path(params["out"])
    if out.exists() and not out.is_dir():
        raise _error(f"--out {str(out)!r} exists and is not a directory.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _error(f"--out {str(out)!r} cannot be created: {exc.strerror or exc}.") from None
    source, target, load_seconds = load_datasets(params["source"], params["target"], params, params["seed"])
    device = source.x.device
    classifier = load_classifier(params["classifier"], target, device)
    steps = params["steps"]
    embedding = None
    if params["unsupervised"]:
        import torch

        def embedding(x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(classifier.model.features(x), dim=1)

    bar, close = progress_callback(steps, 0, not params["quiet"] and sys.stderr.isatty())
    try:
        result = repurpose(
            source,
            target,
            classifier,
            objective=params["objective"],
            steps=steps,
            step_size=params["step_size"],
            flow_labels="kmeans" if params["unsupervised"] else "true",
            embedding=embedding,
            eval_every=max(1, steps // 10),
            record_every=max(1, steps // 8),
            callbacks=[bar],
            seed=params["seed"],
        )
    finally:
        close()
    write_final_npz(out / "final.npz", result.flow)
    figures = _figures(result, out, warn) if params["figures"] else []
    payload = {
        **jsonable(result.to_dict()),
        "source": describe(source, params["source"]),
        "target": describe(target, params["target"]),
        "classifier": params["classifier"] or "embedded MNIST LeNet-5 ensemble",
        "load_seconds": load_seconds,
        "figures": figures,
    }
    write_json_atomic(out / "result.json", payload)
    mode = "unsupervised (k-means pseudo-labels)" if params["unsupervised"] else "supervised (source labels)"
    lines = [
        f"source    {source.name} (n={len(source)}, classes={source.num_classes}) -> target {target.name} "
        f"(n={len(target)})",
        f"flow      {params['objective']}, {mode}, {result.flow.steps} steps, "
        f"step size {result.config['step_size']:g}, {result.seconds:.1f} s",
        f"accuracy  before {100 * result.accuracy_before:.1f}%  ->  after {100 * result.accuracy_after:.1f}%  "
        f"(frozen classifier: {payload['classifier']})",
    ]
    if result.pseudo_label_accuracy is not None:
        lines.append(f"pseudo-labels  {100 * result.pseudo_label_accuracy:.1f}% of the clusters' names are right")
    lines.append(f"wrote     {out}/  result.json, final.npz" + "".join(f", {f}" for f in figures))
    return lines


def register(cli: Any) -> None:
    """Add the ``repurpose`` command to the click group ``cli``."""
    import click

    from .options import data_options, output_options, reports_errors

    @cli.command()
    @click.argument("source", default="usps-mini")
    @click.argument("target", default="mnist-mini")
    @click.option(
        "--classifier",
        type=click.Path(dir_okay=False),
        default=None,
        metavar="FILE.pt",
        help="A LeNet5 state dict trained on TARGET's classes.  [default: the embedded MNIST LeNet-5 ensemble]",
    )
    @click.option(
        "--objective",
        type=click.Choice(["otdd", "mmd-sw"]),
        default="otdd",
        show_default=True,
        help="otdd: OTDD^2/2 (fd-fl, SGD); mmd-sw: MMD^2/2 with the Riesz SW kernel (WoW flow, momentum 0.9).",
    )
    @click.option("--steps", type=click.IntRange(min=1), default=40, show_default=True, metavar="N")
    @click.option(
        "--step-size",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Time step.  [default: 0.5 for otdd, 1.0 for mmd-sw]",
    )
    @click.option(
        "--unsupervised",
        is_flag=True,
        help="Flow with k-means pseudo-labels (on the classifier's features) instead of SOURCE's labels; the "
        "labels then only score the result.",
    )
    @click.option("--out", type=click.Path(file_okay=False), default="runs/repurpose", show_default=True)
    @data_options(max_samples_help="Use at most this many samples of each dataset (random, with --seed).")
    @click.option("--seed", type=int, default=0, show_default=True)
    @output_options("Write the image grid of the samples over the flow, the objective and the accuracy curves.")
    @reports_errors("try --max-samples N.")
    def repurpose(warnings: Any, **params: Any) -> str | None:
        """Flow SOURCE to TARGET and let a frozen classifier trained on TARGET classify SOURCE before and after.

        By default USPS (embedded subset, resized to 28x28) flows to MNIST (embedded subset) and the
        embedded MNIST LeNet-5 ensemble scores it. Writes DIR/result.json, DIR/final.npz and figures (samples
        over the flow, objective, accuracy).
        """
        if params["resize"] is None and params["source"] == "usps-mini" and params["target"] == "mnist-mini":
            params["resize"] = (28, 28)
        lines = run_repurpose_command(params, warn=lambda text: click.echo(f"Warning: {text}", err=True))
        return None if params["quiet"] else "\n".join(lines)
