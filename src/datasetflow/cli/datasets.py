"""``datasetflow datasets``: the built-in dataset names and whether each is available."""

from __future__ import annotations

from typing import Any

__all__ = ["register", "datasets_text"]


def datasets_text(data_dir: str | None) -> str:
    """The table printed by ``datasetflow datasets``."""
    from ..data import DATA_DIR_ENV, describe_builtin_datasets, resolve_data_dir

    root = resolve_data_dir(data_dir)
    rows = describe_builtin_datasets(root)
    names = [r.name if r.split == "test" else f"{r.name}:{r.split}" for r in rows]
    width = max(len(n) for n in names)
    lines = [f"data directory: {root if root is not None else f'none found (set {DATA_DIR_ENV} or --data-dir)'}"]
    for name, row in zip(names, rows, strict=True):
        status = "embedded" if row.embedded else ("available" if row.available else "missing")
        lines.append(f"  {name:<{width}}  {status:<9}  {row.description}")
    return "\n".join(lines)


def register(cli: Any) -> None:
    """Add the ``datasets`` command to the click group ``cli``."""
    import click

    from .options import reports_errors

    @cli.command()
    @click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Directory of the full datasets (default: $DATASETFLOW_DATA_DIR, else ../shared/data).",
    )
    @reports_errors("")
    def datasets(warnings: Any, data_dir: str | None) -> str:
        """List the built-in dataset names and whether each is available."""
        return datasets_text(data_dir)
