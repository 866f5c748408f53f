"""Where the project lives: the one repository URL that the notebooks' install cell, the README's
Colab badges and ``pyproject.toml``'s ``[project.urls]`` repeat (``tests/test_notebooks.py``
checks that every copy equals :data:`REPOSITORY_URL`)."""

from importlib import metadata

REPOSITORY_URL = "https://github.com/signgd-jax/signgd-jax"

try:
    __version__ = metadata.version("signgd-jax")  # pyproject.toml's version, as installed
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
