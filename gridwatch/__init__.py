"""gridwatch: shared pure modules (wire contract, configs, profiles) and the command line.

Nothing here imports a role package at import time; the CLI loads each role lazily.
"""

__version__ = "0.1.0"
