"""Each client draws its episodes from its own stream, in-process as on its supernode: for
every kind of client data (sinusoid regions, whose draws the in-process runtime batches,
and tables), a seeded client-level DP run deployed over Flower messages equals the
in-process run bit for bit: parameters, metrics rows and ε."""

import pytest
import torch

from fedmeta.federated.driver import run_federated
from fedmeta.rundir import RunDir

pytestmark = pytest.mark.filterwarnings("ignore::fedmeta.privacy.noise.InsecureNoiseWarning")


@pytest.mark.parametrize("data", ["sinusoid", "synthetic"])
def test_a_seeded_deployed_run_equals_the_in_process_run(config, grid_factory, deployed, tmp_path, data):
    privacy = {"dp": "central", "noise_multiplier": 0.3, "clip_norm": 0.1, "clipping": "adaptive", "noise_seed": 5}
    cfg = config(data, privacy, rounds=3, n_clients=5, clients_per_round=4, min_clients=1, strategy="fedavg",
                 server_lr=1.0, local_steps_min=1)
    local = run_federated(cfg, RunDir.create(tmp_path / "local", cfg), show_progress=False)
    run = RunDir.create(tmp_path / "flower", cfg)
    remote = run_federated(cfg, run, show_progress=False, runtime=deployed(cfg, grid_factory(5), min_nodes=5, wait=1))
    a = torch.load(tmp_path / "local" / "model.pt", weights_only=True)
    b = torch.load(run.path / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    keep = ("round", "split", "clients", "clip_norm", "epsilon", "loss_after", "bytes_up")
    rows = [[{k: m.get(k) for k in keep} for m in r.metrics()] for r in (RunDir(tmp_path / "local"), run)]
    assert rows[0] == rows[1] and len(rows[0]) > 3
    assert remote["epsilon"] == local["epsilon"] and remote["final"] == local["final"]
