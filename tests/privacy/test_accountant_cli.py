"""`fedmeta privacy`: printed ε and σ against dp_accounting; bad options exit 2 naming them."""

from __future__ import annotations

import re

import dp_accounting as dpa
import pytest

from fedmeta.cli import main

# The reference point measured on 2-core machines: N=60000, batch 256, σ=1.1, 60 epochs, δ=1e-5 -> ε 2.60 (RDP), 2.38 (PLD).
Q, STEPS = 256 / 60000, 60 * 60000 // 256


def test_epsilon_prints_rdp_and_pld_matching_dp_accounting(capsys: pytest.CaptureFixture) -> None:
    code = main(
        [
            "privacy",
            "epsilon",
            "--noise-multiplier",
            "1.1",
            "--sample-rate",
            repr(Q),
            "--steps",
            str(STEPS),
            "--delta",
            "1e-5",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    printed = {k.lower(): float(v) for k, v in re.findall(r"\((RDP|PLD)\) = ([0-9.]+)", out)}
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(Q, dpa.GaussianDpEvent(1.1)), STEPS)
    for kind, acc in (("rdp", dpa.rdp.RdpAccountant()), ("pld", dpa.pld.PLDAccountant())):
        assert printed[kind] == pytest.approx(acc.compose(event).get_epsilon(1e-5), rel=1e-5)
    assert round(printed["rdp"], 2) == 2.60 and round(printed["pld"], 2) == 2.38


def test_noise_prints_sigma_meeting_target(capsys: pytest.CaptureFixture) -> None:
    code = main(
        [
            "privacy",
            "noise",
            "--target-epsilon",
            "2.6",
            "--sample-rate",
            repr(Q),
            "--steps",
            str(STEPS),
            "--delta",
            "1e-5",
        ]
    )
    assert code == 0
    sigma = float(re.search(r"sigma = ([0-9.]+)", capsys.readouterr().out).group(1))
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(Q, dpa.GaussianDpEvent(sigma)), STEPS)
    assert dpa.rdp.RdpAccountant().compose(event).get_epsilon(1e-5) == pytest.approx(2.6, abs=1e-3)


@pytest.mark.parametrize(
    "option, value",
    [
        ("--sample-rate", "1.5"),
        ("--sample-rate", "0"),
        ("--noise-multiplier", "-1"),
        ("--delta", "1"),
        ("--steps", "0"),
    ],
)
def test_bad_values_exit_2_naming_the_option(
    option: str, value: str, capsys: pytest.CaptureFixture
) -> None:
    args = {
        "--noise-multiplier": "1.0",
        "--sample-rate": "0.01",
        "--steps": "10",
        "--delta": "1e-5",
    }
    args[option] = value
    code = main(["privacy", "epsilon", *[x for kv in args.items() for x in kv]])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0]
