"""forgetd: honour erasure demands against the ML models you serve."""

__version__ = "0.1.0"
