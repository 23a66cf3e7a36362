"""`fedmeta ledger`: verify a run's signed ledger, show its history, prove an entry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fedmeta.errors import BadInput

ledger_app = typer.Typer(help="The signed, tamper-evident ledger of a run.", no_args_is_help=True)
LedgerPath = Annotated[Path, typer.Argument(help="Run folder or its ledger.db.")]


def _known_head(text: str | None) -> tuple[int, str] | None:
    if text is None:
        return None
    size, _, root = text.partition(":")
    if not size.isdigit():
        raise BadInput("--known-root", text, "SIZE:ROOT_HEX, e.g. from `fedmeta ledger prove`")
    return int(size), root


def _check_eth_url(url: str) -> None:
    """An Ethereum node's JSON-RPC endpoint over HTTP(S), as `ledger.anchor.connect` takes it."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput("--eth-url", url, "an http:// or https:// URL of an Ethereum JSON-RPC node, e.g. http://127.0.0.1:8545")


@ledger_app.command()
def verify(
    path: LedgerPath,
    public_key: Annotated[
        str | None, typer.Option(help="Expected server public key (hex); pins it.")
    ] = None,
    known_root: Annotated[
        str | None, typer.Option(help="SIZE:ROOT_HEX of a tree head saved earlier.")
    ] = None,
    eth_url: Annotated[
        str | None, typer.Option(help="Ethereum JSON-RPC URL to check anchors against.")
    ] = None,
) -> None:
    """Exit 0 only if every hash, proof, signature and model file checks out."""
    from fedmeta.ledger import Ledger, verify_ledger

    anchor = None
    if eth_url is not None:
        _check_eth_url(eth_url)
        from fedmeta.ledger.anchor import connect

        anchor = connect(eth_url)
    try:
        covered = verify_ledger(
            path, public_key=public_key, anchor=anchor, known_head=_known_head(known_root)
        )
    except BadInput as err:
        option = {"public_key": "--public-key", "known_head": "--known-root"}.get(err.field)
        raise (BadInput(option, err.value, err.accepted) if option else err) from None
    with Ledger.open(path) as ledger:
        heads = ledger.tree_heads()
        root = heads[-1].root.hex() if heads else "-"
        pinned = "pinned" if public_key else "as recorded; pin it with --public-key"
        typer.echo(f"ok: {ledger.size} entries, {len(heads)} signed tree heads, root {root}")
        typer.echo(f"server key {ledger.public_key} ({pinned})")
    models = [name for name in covered if name.startswith("models/")]
    for name, sha in covered.items():
        if name not in models:
            typer.echo(f"covers {name} {sha}")
    typer.echo(f"covers models/: {len(models)} model versions, each named by its SHA-256")


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "-"


def _details(e: dict[str, Any]) -> str:
    kind = e.get("type")
    if kind == "start":
        return f"run {e.get('run_id')}, {len(e.get('participants', {}))} participants"
    if kind == "round":
        return f"{e.get('aggregation')}, {len(e.get('rejected', []))} rejected"
    if kind == "rejection":
        return f"{e.get('client_id')}: {e.get('reason')}"
    if kind == "anchor":
        return f"size {e.get('size')} in tx {_short(e.get('tx_hash'))}"
    if kind == "end":
        return json.dumps(e.get("summary", {}))[:60]
    return ""


@ledger_app.command()
def show(path: LedgerPath) -> None:
    """Print the run's history: rounds, model hashes, contributors, ε, rejections."""
    from rich.console import Console
    from rich.table import Table

    from fedmeta.ledger import Ledger

    table = Table(title=f"ledger {path}")
    for column in ("#", "type", "round", "model", "parent", "contributors", "ε", "details"):
        table.add_column(column)
    with Ledger.open(path) as ledger:
        for idx, body, _ in ledger.entries():
            e = json.loads(body)
            kind = e.get("type", "?")
            details = _details(e)
            eps = e.get("epsilon")
            table.add_row(
                str(idx),
                kind,
                str(e.get("round", "")),
                _short(e.get("model_sha256") or e.get("final_model_sha256")),
                _short(e.get("parent_sha256")),
                ", ".join(e.get("clients", [])),
                "" if eps is None else f"{eps:.4g}",
                details,
            )
    Console(width=160).print(table)


@ledger_app.command()
def prove(
    path: LedgerPath,
    entry: Annotated[int, typer.Option(help="Index of the entry to prove.")],
) -> None:
    """Print a JSON inclusion proof of one entry under the latest signed tree head."""
    from fedmeta.ledger import Ledger

    with Ledger.open(path) as ledger:
        try:
            doc = ledger.prove(entry)
        except BadInput as err:
            raise BadInput("--entry", err.value, err.accepted) from err
    typer.echo(json.dumps(doc, indent=2))


@ledger_app.command("verify-proof")
def verify_proof(
    proof: Annotated[Path, typer.Argument(help="A file holding the JSON `fedmeta ledger prove` printed.")],
    public_key: Annotated[
        str | None, typer.Option(help="Expected server public key (hex); pins it.")
    ] = None,
) -> None:
    """Exit 0 only if the proof's entry is in the tree its signed head commits to."""
    from fedmeta.errors import FedmetaError
    from fedmeta.ledger.standalone import ProofError, verify_proof_document

    try:
        doc = json.loads(proof.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInput("PROOF", str(proof), f"a readable JSON file that `fedmeta ledger prove` printed ({err})") from None
    if not isinstance(doc, dict):
        raise BadInput("PROOF", str(proof), "a JSON object that `fedmeta ledger prove` printed")
    try:
        verify_proof_document(doc, public_key)
    except ProofError as err:
        raise FedmetaError(f"proof {proof}: {err}") from None
    typer.echo(f"ok: entry {doc['index']} is in the tree of size {doc['tree_size']} with root {doc['root']}, "
               f"signed by {doc['public_key']}")


def register(app: typer.Typer) -> None:
    app.add_typer(ledger_app, name="ledger")
