"""The run's membership audit: scores are the global model's per-example losses (checked
against sklearn on losses computed with the plain module), a model that memorised its
training clients is caught, and an untrained one is not."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from fedmeta.data.federated import ExampleClient, FederatedData, WeightedTasks
from fedmeta.federated.membership import membership_audit
from fedmeta.meta import MAML
from fedmeta.models import build_model, parameters_of


def clients(n: int, gen: torch.Generator, size: int = 20) -> list[ExampleClient]:
    """Random inputs with random labels: only memorisation can fit them."""
    return [ExampleClient(torch.randn(size, 8, generator=gen), torch.randint(0, 4, (size,), generator=gen), 5, 5,
                          "classification", 4) for _ in range(n)]


@pytest.fixture
def setup():
    gen = torch.Generator().manual_seed(0)
    data = FederatedData(clients(10, gen), clients(10, gen), "classification", 4, (8,))
    torch.manual_seed(0)
    model = build_model("mlp", (8,), 4, hidden=[128, 128])
    return data, model, MAML(model, "classification")


def test_audit_matches_sklearn_on_plain_losses_and_catches_memorisation(setup):
    data, model, learner = setup
    x = torch.cat([c.x for c in data.train])
    y = torch.cat([c.y for c in data.train])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):  # memorise the members
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    audit = membership_audit(learner, parameters_of(model), data)
    with torch.no_grad():
        member = F.cross_entropy(model(x), y, reduction="none").numpy()
        outside = torch.cat([F.cross_entropy(model(c.x), c.y, reduction="none") for c in data.held_out]).numpy()
    labels = np.r_[np.ones(member.size), np.zeros(outside.size)]
    assert audit["auc"] == pytest.approx(roc_auc_score(labels, -np.r_[member, outside]))
    assert audit["auc"] > 0.9 and audit["n_members"] == 200 and audit["n_nonmembers"] == 200


def test_untrained_model_gives_chance_auc(setup):
    data, model, learner = setup
    assert abs(membership_audit(learner, parameters_of(model), data)["auc"] - 0.5) < 0.1


def test_task_space_clients_are_not_audited(setup):
    data, model, learner = setup
    tasks = FederatedData([WeightedTasks(None)], [WeightedTasks(None)], "regression", 1, (1,))
    assert membership_audit(learner, parameters_of(model), tasks) is None


def test_dp_run_reports_epsilon_accountant_and_audit(config, tmp_path):
    from fedmeta.federated.driver import run_federated
    from fedmeta.report import write_report
    from fedmeta.rundir import RunDir

    cfg = config("digits", rounds=2, n_clients=10, held_out_clients=4, clients_per_round=4, eval_every=1)
    cfg = cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update={"dp": "central", "accountant": "pld"})})
    run = RunDir.create(tmp_path / "r", cfg)
    summary = run_federated(cfg, run, show_progress=False)
    page = write_report(run.path).read_text()
    audit = summary["membership_audit"]
    assert audit["n_members"] == sum(c.n_examples for c in _train_clients(cfg))
    assert f"<td>{audit['auc']:.3f}</td>" in page and "<b>pld</b>" in page and f"{summary['epsilon']:.4g}" in page
    assert (run.path / "privacy.png").exists()


def _train_clients(cfg):
    from fedmeta.data.federated import make_federated

    return make_federated(cfg, torch.Generator().manual_seed(cfg.run.seed)).train
