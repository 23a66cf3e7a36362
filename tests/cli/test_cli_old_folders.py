"""Run folders written by the runtime before its redesign and before the config sections
(commit 7c407ea) resume with this code to the model the old code finished with.

Each folder under old_folders/<name>/ was made by that commit: `run/` is a federated run of
3 rounds stopped by a failure in round 2 (its config.toml in the flat [federated] layout, the
checkpoint in the old format, the ledger, the stored models); `expected.json` holds the hash
of the final model (and the ε) of the same config run by the old code without stopping;
`throwaway_test_server_key.pem` is the server key both runs signed their ledgers with, a key
made for these fixtures only.

- sinusoid_topk: FedMeta on the sinusoid with top-k compression (fraction 0.3), so the
  checkpoint holds the clients' error-feedback residuals (the old `codec_state`).
- synthetic_adaptive_dp: Synthetic(1,1), central client-level DP with adaptive clipping and a
  seeded noise, so the checkpoint holds the old `aggregation` clip state and the accountant.

A resume that dropped the residuals or the clip state would end on another model, one that
dropped the accountant's history on a smaller ε.

They were made by running, with the old code, `fedmeta.cli.main(["run", CFG, "--out", OUT,
"--no-progress"])` with `fedmeta.federated.simulation.Simulation.run_round` raising on its
second call (exit 1), and again without it into another folder for the expected model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from fedmeta.cli import main
from fedmeta.ledger import verify_ledger

pytestmark = pytest.mark.filterwarnings("ignore::fedmeta.privacy.noise.InsecureNoiseWarning")

OLD = Path(__file__).resolve().parent / "old_folders"
FOLDERS = ["sinusoid_topk", "synthetic_adaptive_dp"]


def model_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over each tensor's name and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", FOLDERS)
def test_a_folder_of_the_old_runtime_resumes_to_its_model_and_verifies(name, tmp_path, monkeypatch, capsys):
    fixture = OLD / name
    expected = json.loads((fixture / "expected.json").read_text())
    run = shutil.copytree(fixture / "run", tmp_path / "run")  # never resume the checked-in folder
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(fixture / "throwaway_test_server_key.pem", home / "server_key.pem")
    monkeypatch.setenv("FEDMETA_HOME", str(home))
    written = (run / "config.toml").read_bytes()
    assert "model.pt" not in {p.name for p in run.iterdir()}  # stopped before the end

    assert main(["run", "--resume", str(run), "--no-progress"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err.splitlines()
    said = [line for line in err if line.startswith("config: ")]
    assert len(said) == 1 and "flat [federated] layout" in said[0] and "left as written" in said[0], err
    assert (run / "config.toml").read_bytes() == written

    state = torch.load(run / "model.pt", weights_only=True)
    assert {k: f"{str(v.dtype).removeprefix('torch.')} {list(v.shape)}" for k, v in state.items()} == expected["tensors"]
    assert model_sha256(state) == expected["model_sha256"]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == expected["rounds"]
    assert summary.get("epsilon") == expected["epsilon"]  # the accountant kept round 1
    public_key = summary["ledger"]["server_public_key"]
    assert public_key == expected["server_public_key"]  # the shipped key, not a new one
    verify_ledger(run, public_key=public_key)
