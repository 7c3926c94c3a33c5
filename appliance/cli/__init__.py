"""The ``appliance`` command: a thin layer over :class:`appliance.api.Appliance`.

Each module of this package registers its subcommands on the one group in ``_base``.
"""

from __future__ import annotations

import sys
import traceback

import click

from appliance.cli import answer as _answer  # noqa: F401  (registers ask, batch)
from appliance.cli import bundle as _bundle  # noqa: F401  (registers subcommands)
from appliance.cli import commands as _commands  # noqa: F401  (registers subcommands)
from appliance.cli import eval as _eval  # noqa: F401  (registers eval, eval-retrieval)
from appliance.cli import train as _train  # noqa: F401  (registers train, train-data)
from appliance.cli import tui as _tui  # noqa: F401  (registers tui, feedback)
from appliance.cli._base import cli, err, lit
from appliance.errors import ApplianceError

__all__ = ["cli", "main"]


# -- entry point ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; map ApplianceError to one sentence and its exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="appliance", standalone_mode=False)
    except click.exceptions.Abort as exc:
        # click turns Ctrl-C into Abort; a declined confirmation is an Abort too
        if isinstance(exc.__context__, KeyboardInterrupt):
            err.print("Interrupted; everything committed so far is kept.")
        else:
            err.print("Aborted.")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ApplianceError as exc:
        if debug:
            traceback.print_exc()
        err.print(f"[bold red]{lit(exc.title)}:[/] {lit(exc.message)}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("Interrupted; everything committed so far is kept.")
        sys.exit(130)
    except Exception as exc:  # a bug: still one sentence unless --debug
        if debug:
            traceback.print_exc()
        err.print(f"[bold red]Unexpected error:[/] {type(exc).__name__}: {lit(exc)} "
                  "(run again with --debug for the traceback and report it).")
        sys.exit(70)


