"""`fedmeta keys`: Ed25519 identities for clients and servers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from fedmeta.errors import BadInput

keys_app = typer.Typer(help="Ed25519 identities.", no_args_is_help=True)


def _check_out(out: Path) -> None:
    """`--out` is a folder this process can write in, created if missing: checked before a
    key is generated, so nothing is half-written."""
    accepted = "a folder to write NAME.pem and NAME.pub in"
    if out.exists() and not out.is_dir():
        raise BadInput("--out", str(out), f"{accepted} (this is a file)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput("--out", str(out), f"{accepted} ({err.strerror or err})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise BadInput("--out", str(out), f"{accepted} (not writable)")


@keys_app.command()
def create(
    out: Annotated[Path, typer.Option(help="Folder for NAME.pem (mode 0600) and NAME.pub.")],
    name: Annotated[str, typer.Option(help="Client id (or 'server').")],
) -> None:
    """Create an identity; prints the public key hex to put in the run config."""
    from fedmeta.ledger.keys import Identity

    if not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise BadInput("--name", name, "a non-empty file name without path separators, not starting with '.'")
    _check_out(out)
    for suffix in (".pem", ".pub"):
        if (out / f"{name}{suffix}").exists():
            raise BadInput("--name", name, f"a name with no identity in {out} yet ({name}{suffix} exists)")
    try:
        ident = Identity.create(out, name)
    except OSError as err:
        raise BadInput("--out", str(out), f"a folder to write NAME.pem and NAME.pub in ({err.strerror or err})") from None
    typer.echo(f"private key written to {ident.private_path}", err=True)
    typer.echo(ident.public_key)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
