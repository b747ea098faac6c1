"""quantgate's regression suite over fixtures/matrix/*.toml (run: `pytest tests/regression -m cpu`)."""

from quantgate.suite import *  # noqa: F401,F403
