"""labnodes: the programs that run on every labkit cluster host (one CLI, `labnodes`, one module per program)."""

__version__ = "0.1.0"


class LabnodesError(Exception):
    """A failure to report to the user as one clear line (the CLI prints it and exits 1).

    `code` names the kind of failure for programs (labkit's checks pick their hint by it, never by the wording):
    "connect" and "timeout" (the server at `address` could not be reached / did not answer), "wrong-key" (the
    Pyro4 peer at `address` refused this host's hmac_key), "settings" (labnodes.toml), a ring hop's failure
    ("hop-timeout", "hop-gone", ...: ring_lap.HOP_FAILURES; `address` is the node the hop could not reach), or a
    file-transfer code (filexfer.TransferError); "" when no program needs to tell it apart. With `--json` the CLI prints it on
    stdout as {"error": {"message", "code", "address"}}."""

    def __init__(self, message: str, *, code: str = "", address: str = ""):
        super().__init__(message)
        self.code, self.address = code, address
