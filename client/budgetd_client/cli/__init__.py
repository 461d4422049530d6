"""budgetctl, the command line over the admin and caller clients. YAML input
needs the `cli` extra (PyYAML), imported only when a YAML file is read."""

from budgetd_client.cli.main import main

__all__ = ["main"]
