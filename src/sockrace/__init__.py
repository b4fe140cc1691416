"""sockrace: see what goes wrong when many asyncio coroutines share one socket."""

__version__ = "0.1.0"
