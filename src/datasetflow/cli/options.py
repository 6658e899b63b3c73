"""click pieces shared by the commands: parameter types, option groups, one-line usage errors.

This module imports click; it is imported only by :func:`datasetflow.cli.main.build_cli`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

__all__ = [
    "SIZE",
    "DEVICE",
    "OneLineCommand",
    "OneLineGroup",
    "reports_errors",
    "data_options",
    "label_cost_options",
    "output_options",
    "explicit_params",
    "convert_config_value",
]


class SizeType(click.ParamType):
    """An image size: ``"28x28"``, ``"28"``, ``28`` or ``[28, 28]`` (from a config file) -> ``(H, W)``."""

    name = "HxW"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, int] | None:
        if value is None or (isinstance(value, tuple) and len(value) == 2):
            return value
        from ..data import parse_size
        from ..errors import DatasetflowError

        try:
            return parse_size(value, argument="--resize")
        except DatasetflowError as exc:
            self.fail(str(exc), param, ctx)


class DeviceType(click.ParamType):
    """A torch device string: cpu, cuda, cuda:N, mps, ..."""

    name = "DEVICE"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        import torch

        try:
            torch.device(value)
        except (RuntimeError, ValueError, TypeError):
            self.fail(f"{value!r} is not a torch device (cpu, cuda, cuda:N).", param, ctx)
        return str(value)


#: The label cost names of :func:`datasetflow.labels.get_label_cost` (kept here so that ``--help`` needs no
#: torch import; a test checks that they agree).
LABEL_COST_NAMES = ("gaussian", "exact", "sinkhorn", "sliced", "bures", "sw")

SIZE = SizeType()
DEVICE = DeviceType()


class _OneLineUsageError(click.UsageError):
    """A usage error shown as one line ``Error: ...`` (no usage banner)."""

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


class OneLineCommand(click.Command):
    """A command whose bad options and arguments are reported as one line ``Error: ...`` (exit 2)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise _OneLineUsageError(exc.format_message(), ctx) from None


class OneLineGroup(click.Group):
    """A command group whose usage errors (unknown command, ...) are one line, and whose commands are
    :class:`OneLineCommand` s by default."""

    command_class = OneLineCommand

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise _OneLineUsageError(exc.format_message(), ctx) from None

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            raise _OneLineUsageError(exc.format_message(), ctx) from None


#: Exit status of errors (bad input, library errors) and of an interrupted command.
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's convention for SIGINT


def reports_errors(memory_hint: str) -> Callable:
    """Run a command body with warnings captured and every expected failure reported in one line.

    The body receives ``warnings`` (a :class:`~datasetflow.cli.common.WarningLog`; warnings are
    echoed on stderr after the body) and returns the text to print, or None. Library errors and
    unusable files exit 2 with ``Error: ...``; running out of memory exits 2 with ``memory_hint``;
    Ctrl-C exits 130.
    """

    def wrap(body: Callable) -> Callable:
        @functools.wraps(body)
        def command(**params: Any) -> None:
            import torch

            from ..errors import DatasetflowError
            from .common import captured_warnings, os_error_text

            ctx = click.get_current_context()

            def fail(message: str, status: int = EXIT_ERROR) -> None:
                click.echo(f"Error: {message}", err=True)
                ctx.exit(status)

            with captured_warnings() as log:
                try:
                    text = body(warnings=log, **params)
                except DatasetflowError as exc:
                    return fail(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                except (MemoryError, torch.OutOfMemoryError) as exc:
                    return fail(
                        f"out of memory ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); {memory_hint}"
                    )
                except OSError as exc:
                    return fail(os_error_text(exc))
                except KeyboardInterrupt as exc:
                    return fail(str(exc) or "interrupted.", EXIT_INTERRUPTED)
            for message in log.messages:
                click.echo(f"Warning: {message}", err=True)
            if text:
                click.echo(text)

        return command

    return wrap


def _apply(decorators: list[Callable]) -> Callable:
    def wrap(fn: Callable) -> Callable:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return wrap


def data_options(*, max_samples_help: str) -> Callable:
    """``--data-dir``, ``--resize``, ``--device``, ``--dtype`` and ``--max-samples``."""
    return _apply(
        [
            click.option(
                "--data-dir",
                type=click.Path(file_okay=False),
                default=None,
                help="Directory of the full datasets (default: $DATASETFLOW_DATA_DIR, else ../shared/data).",
            ),
            click.option(
                "--resize",
                type=SIZE,
                default=None,
                metavar="HxW",
                help="Resize both datasets' images, e.g. 28x28 (USPS 16x16 next to MNIST).",
            ),
            click.option(
                "--device", type=DEVICE, default="cpu", show_default=True, help="Torch device: cpu, cuda or cuda:N."
            ),
            click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True),
            click.option("--max-samples", type=click.IntRange(min=1), default=None, help=max_samples_help),
        ]
    )


def output_options(figures_help: str) -> Callable:
    """``--figures/--no-figures`` and ``--quiet``."""
    return _apply(
        [
            click.option("--figures/--no-figures", default=True, show_default=True, help=figures_help),
            click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary."),
        ]
    )


def label_cost_options(*, outer_help: str, inner_default: str = "gaussian") -> Callable:
    """``--inner``, ``--outer`` and ``--reg`` (the OTDD solver settings)."""
    return _apply(
        [
            click.option(
                "--inner",
                type=click.Choice(list(LABEL_COST_NAMES)),
                default=None,
                help="Label cost W2^2 between classes: gaussian (Bures closed form; alias bures), exact OT, "
                "Sinkhorn or sliced Wasserstein between class point clouds.  "
                f"[library default: {inner_default}]",
            ),
            click.option(
                "--outer",
                type=click.Choice(["exact", "sinkhorn", "lowrank", "minibatch"]),
                default=None,
                help=outer_help + " lowrank and minibatch never form the n x m cost (large n; docs/otdd.md).",
            ),
            click.option(
                "--reg",
                type=click.FloatRange(min=0, min_open=True),
                default=None,
                help="Entropic regularisation (absolute) for Sinkhorn. Default: the library's default relative to "
                "the cost scale.",
            ),
        ]
    )


def explicit_params(ctx: click.Context) -> set[str]:
    """Names of the parameters given on the command line (or by environment), not left at their default."""
    explicit = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            explicit.add(name)
    return explicit


def convert_config_value(ctx: click.Context, name: str, value: Any) -> Any:
    """Check and convert a config-file value with the type of the option ``name`` (the same checks
    and messages as on the command line). Raises ``ValueError`` with the message on failure."""
    param = next(p for p in ctx.command.params if p.name == name)
    if value is None:
        return None
    if isinstance(param.type, click.types.BoolParamType) and not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}.")
    numeric = (click.types.IntParamType, click.types.FloatParamType)
    if isinstance(param.type, numeric) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"must be a number, got {value!r}.")
    if isinstance(param.type, click.types.IntParamType) and isinstance(value, float):
        raise ValueError(f"must be an integer, got {value!r}.")
    if isinstance(param.type, (click.Choice, click.Path)) and not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}.")
    try:
        return param.type.convert(value, None, None)
    except click.BadParameter as exc:
        raise ValueError(exc.message) from None
