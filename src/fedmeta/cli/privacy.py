"""`fedmeta privacy`: ε of a DP-SGD / DP-FedAvg schedule, and the σ that meets a target ε."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer

from fedmeta.errors import BadInput

T = TypeVar("T")
# the accountant's MAX_PLD_STEPS and MAX_PLD_EPSILON: help is shown without dp_accounting
PLD_LIMITS = "at most 10,000,000 steps and ε <= 1000"

privacy_app = typer.Typer(
    help="Privacy accounting for Poisson-subsampled Gaussian steps.", no_args_is_help=True
)


def _as_options(compute: Callable[[], T]) -> T:
    """Run `compute`, renaming a bad library argument after the command-line option."""
    try:
        return compute()
    except BadInput as err:
        raise BadInput("--" + err.field.replace("_", "-"), err.value, err.accepted) from err


@privacy_app.command()
def epsilon(
    noise_multiplier: float = typer.Option(..., help="Noise multiplier σ (noise std / clip)."),
    sample_rate: float = typer.Option(..., help="Poisson sampling rate q in (0, 1]."),
    steps: int = typer.Option(..., help="Number of steps (or rounds)."),
    delta: float = typer.Option(..., help="δ in (0, 1)."),
    accountant: str = typer.Option("both", help=f"rdp, pld or both (PLD: {PLD_LIMITS})."),
) -> None:
    """Print ε at δ after STEPS subsampled Gaussian steps, by RDP and by PLD accounting."""
    from fedmeta.privacy.accountant import KINDS, Steps, check_pld_affordable, epsilon_of

    if accountant not in (*KINDS, "both"):
        raise BadInput("--accountant", accountant, "rdp, pld or both")
    kinds = KINDS if accountant == "both" else (accountant,)

    def history() -> tuple[Steps, ...]:
        run = Steps(noise_multiplier, sample_rate, steps)
        if "pld" in kinds:  # every check before anything is printed
            check_pld_affordable(run, delta)
        return (run,)

    runs = _as_options(history)
    for kind in kinds:
        eps = _as_options(lambda kind=kind: epsilon_of(runs, delta, kind))
        typer.echo(f"epsilon ({kind.upper()}) = {eps:.6g}")


@privacy_app.command()
def noise(
    target_epsilon: float = typer.Option(..., help="Privacy budget ε > 0."),
    sample_rate: float = typer.Option(..., help="Poisson sampling rate q in (0, 1]."),
    steps: int = typer.Option(..., help="Number of steps (or rounds)."),
    delta: float = typer.Option(..., help="δ in (0, 1)."),
    accountant: str = typer.Option("rdp", help="Accounting method: rdp or pld."),
) -> None:
    """Print the smallest noise multiplier σ that keeps ε at δ within the target."""
    from fedmeta.privacy.accountant import noise_multiplier_for

    sigma = _as_options(
        lambda: noise_multiplier_for(
            target_epsilon=target_epsilon,
            delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,  # type: ignore[arg-type]
        )
    )
    typer.echo(f"noise multiplier sigma = {sigma:.6g} ({accountant.upper()})")


def register(app: typer.Typer) -> None:
    app.add_typer(privacy_app, name="privacy")
