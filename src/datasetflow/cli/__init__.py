"""The ``datasetflow`` command line (needs the optional ``cli`` extra: click).

The entry point is :func:`datasetflow.cli.main.main`; ``python -m datasetflow.cli`` runs it
too. Importing this package does not import click.
"""
