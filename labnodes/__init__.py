"""labnodes: the programs that run on every labkit cluster host (one CLI, `labnodes`, one module per program)."""

__version__ = "0.1.0"


class LabnodesError(Exception):
    """A failure to report to the user as one clear line (the CLI prints it and exits 1)."""
