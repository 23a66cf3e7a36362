"""The `fedmeta` command: one module per subcommand; library errors become one line + exit code."""

from __future__ import annotations

import sys
import warnings
from typing import Annotated

import typer

from fedmeta.errors import BadInput, ConfigDeprecationWarning, FedmetaError

app = typer.Typer(
    name="fedmeta",
    help="Privacy-preserving federated meta-learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    """`--version`: print `fedmeta <version>` and stop."""
    if value:
        from fedmeta import __version__

        typer.echo(f"fedmeta {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Privacy-preserving federated meta-learning: `fedmeta run` starts the default demo."""


_registered: list[bool] = []


def _register() -> None:
    """Attach every subcommand module to `app` (once)."""
    if _registered:
        return
    from fedmeta.cli import compare, data, deploy, keys, ledger, privacy, report, run  # noqa: F401  (run decorates `app`)

    for module in (privacy, ledger, keys, data, report, compare, deploy):
        module.register(app)
    _registered.append(True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 done, 2 bad input, 1 failure during the run."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def one_line(message, category, filename, lineno, file=None, line=None) -> None:
            """A config deprecation notice as one line on stderr (no file or line number: it
            is about the user's config, not about code); any other warning as before."""
            if issubclass(category, ConfigDeprecationWarning):
                print(str(message).splitlines()[0], file=sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.simplefilter("default", ConfigDeprecationWarning)  # each notice once per command
        warnings.showwarning = one_line
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's per-order RDP notes
    _register()
    try:
        app(args=argv, standalone_mode=False)
    except BadInput as err:
        print(f"fedmeta: error: {err}", file=sys.stderr)
        return 2
    except FedmetaError as err:
        print(f"fedmeta: failed: {err}", file=sys.stderr)
        return 1
    except (typer.Exit, SystemExit) as err:
        code = getattr(err, "exit_code", getattr(err, "code", 0))
        return int(code or 0)
    except Exception as err:  # click usage errors and anything unexpected
        import click

        if isinstance(err, click.exceptions.UsageError):
            print(f"fedmeta: error: {err.format_message()}", file=sys.stderr)
            return 2
        if isinstance(err, click.exceptions.Abort):
            print("fedmeta: aborted", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
