"""The golden runs (golden.py) reproduce bit for bit: final parameters' SHA-256, every
metrics row, the summary and the ledger root, as recorded in runs.json."""

import json

import pytest
import torch

from golden import MATRIX, RECORDED, fingerprint, run_case

pytestmark = pytest.mark.filterwarnings("ignore::fedmeta.privacy.noise.InsecureNoiseWarning")
RECORD = json.loads(RECORDED.read_text())


def test_every_case_is_recorded():
    assert sorted(RECORD["runs"]) == sorted(MATRIX)


@pytest.mark.parametrize("name", list(MATRIX))
def test_golden_run(name, tmp_path):
    if RECORD["fingerprint"] != fingerprint():
        pytest.skip(f"recorded on {RECORD['fingerprint']}, this machine is {fingerprint()}: float kernels differ")
    want, got = RECORD["runs"][name], run_case(name, tmp_path)
    tolerance = MATRIX[name]["tolerance"]
    if tolerance:  # CKKS noise reaches every figure: the parameters to `tolerance`, the rest to 1e-4
        mine = got.pop("params")
        for k, v in want.pop("params").items():
            assert torch.allclose(torch.tensor(mine[k]), torch.tensor(v), rtol=0, atol=tolerance), k
        del want["params_sha256"], got["params_sha256"]
        assert close(got, want), (got, want)
        return
    assert got == want


def close(a, b, rel=1e-4) -> bool:
    """`a` equals `b`, numbers to a relative `rel` (with a floor of `rel` for numbers near 0)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= rel * max(1.0, abs(b))
    return a == b
