"""Where the project lives: the one repository URL that the notebooks' install cell, the README's
Colab badges and ``pyproject.toml``'s ``[project.urls]`` repeat (``tests/test_notebooks.py``
checks that every copy equals :data:`REPOSITORY_URL`)."""

REPOSITORY_URL = "https://github.com/signgd-jax/signgd-jax"
# What a Colab user installs: ``pip install "git+https://github.com/signgd-jax/signgd-jax"``.
PIP_REQUIREMENT = f"git+{REPOSITORY_URL}"
