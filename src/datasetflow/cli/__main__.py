"""``python -m datasetflow.cli``: the same as the ``datasetflow`` command."""

from .main import main

if __name__ == "__main__":
    main()
