"""``python -m datasetflow`` (and ``torchrun ... -m datasetflow``): the same as the ``datasetflow`` command."""

from .cli.main import main

if __name__ == "__main__":
    main()
