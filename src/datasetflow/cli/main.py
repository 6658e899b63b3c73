"""The ``datasetflow`` command line.

Commands::

    datasetflow distance SOURCE TARGET [options]   # OTDD between two datasets
    datasetflow distance-matrix A B C ... [--method sotdd|busemann|busemann-gaussian|otdd] [--json] [--out DIR]
    datasetflow flow SOURCE TARGET --steps N --out DIR [options]   # gradient flow of a dataset
    datasetflow flow --config FILE.yaml [--out DIR] [options]      # the same, from a YAML file
    datasetflow repurpose [SOURCE TARGET] [options] # frozen classifier before/after a flow
    datasetflow datasets [--data-dir DIR]          # built-in dataset names and availability
    datasetflow --version

Each command lives in its own module (:mod:`~datasetflow.cli.distance`, :mod:`~datasetflow.cli.flow`,
:mod:`~datasetflow.cli.repurpose`, :mod:`~datasetflow.cli.datasets`), holds no library logic and
reports errors through one decorator (:func:`~datasetflow.cli.options.reports_errors`): one line
``Error: ...`` on stderr and exit status 2. click is an optional dependency (the ``cli`` extra);
it is imported only when the command line runs.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "build_cli"]

EXIT_ERROR = 2
_MISSING_CLICK = (
    "datasetflow: the command line needs the 'click' package, which is not installed.\n"
    "Install the CLI extra:  pip install 'datasetflow[cli]'"
)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("datasetflow")
    except metadata.PackageNotFoundError:
        import datasetflow

        return str(getattr(datasetflow, "__version__", "unknown"))


@functools.lru_cache(maxsize=1)
def build_cli() -> Any:
    """The click command group (imports click; raises ImportError if it is missing)."""
    import click

    from . import datasets, distance, distance_matrix, flow, repurpose
    from .options import OneLineGroup

    @click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(_version(), "--version", prog_name="datasetflow", message="%(prog)s %(version)s")
    def cli() -> None:
        """Optimal-transport dataset distances (OTDD) and gradient flows of labeled datasets."""

    for module in (distance, distance_matrix, flow, repurpose, datasets):
        module.register(cli)
    return cli


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``datasetflow`` command (exits with the command's status)."""
    try:
        import click  # noqa: F401
    except ImportError:
        print(_MISSING_CLICK, file=sys.stderr)
        sys.exit(EXIT_ERROR)
    build_cli().main(args=list(argv) if argv is not None else None, prog_name="datasetflow")


if __name__ == "__main__":
    main()
