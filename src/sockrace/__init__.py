"""sockrace: see what goes wrong when many asyncio coroutines share one socket."""

__all__ = ["__version__"]

# The one place the version is written: pyproject.toml reads it from here (`dynamic = ["version"]`), so that
# the distribution, `sockrace --version` and this constant cannot disagree. CHANGELOG.md says what changed.
__version__ = "0.1.0"
