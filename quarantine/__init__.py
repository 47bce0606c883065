"""qsup: a poison-message quarantine supervisor for batch content scanners."""

__version__ = "0.1.0"
