"""`fedmeta keys`: Ed25519 identities for clients and servers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

keys_app = typer.Typer(help="Ed25519 identities.", no_args_is_help=True)


@keys_app.command()
def create(
    out: Annotated[Path, typer.Option(help="Folder for NAME.pem (mode 0600) and NAME.pub.")],
    name: Annotated[str, typer.Option(help="Client id (or 'server').")],
) -> None:
    """Create an identity; prints the public key hex to put in the run config."""
    from fedmeta.ledger.keys import Identity

    ident = Identity.create(out, name)
    typer.echo(f"private key written to {ident.private_path}", err=True)
    typer.echo(ident.public_key)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
