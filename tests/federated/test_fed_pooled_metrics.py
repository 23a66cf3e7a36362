"""`meta.eval_metrics` (figures pooled over the evaluation clients' query sets) and
`data.class_weights` (a weighted cross-entropy), each against an independent reference:
the per-task losses `evaluate` reports, a plain forward pass, a rank count for the AUC,
the classes' recalls by hand, and the weighted mean written out from log-softmax."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedmeta.config import Config
from fedmeta.data.federated import from_tensors
from fedmeta.errors import ConfigError
from fedmeta.federated.evaluation import episodes, evaluation_clients, pooled_figures
from fedmeta.federated.runtime import Runtime
from fedmeta.meta.base import loss_for


def runtime(data: dict, metrics: list[str], classes: int | None = None, **fed) -> Runtime:
    """A one-round-ready runtime; with `classes`, on clients of random 4-feature rows whose
    label is a rule of the features (from_tensors), as many classes as asked."""
    tensors = None
    if classes is not None:
        g = torch.Generator().manual_seed(1)

        def client(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.randn(n, 4, generator=g)
            return x, ((x[:, 0] + 0.5 * x[:, 1]).sigmoid() * classes).long().clamp(max=classes - 1)

        tensors = from_tensors([client() for _ in range(8)], [client() for _ in range(6)], support_size=5, query_size=20)
    cfg = Config.model_validate({
        "run": {"seed": 3}, "data": data, "model": {"name": "mlp", "hidden": [16]},
        "meta": {"eval_inner_steps": 3, "inner_lr": 0.1, "eval_metrics": metrics},
        "federated": {"rounds": 1, "n_clients": 8, "held_out_clients": 6, "clients_per_round": 4, **fed}})
    return Runtime(cfg, data=tensors)


def auc_by_ranks(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties counting one half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    return float(wins.mean())


def test_pooled_rmse_and_mae_match_the_per_task_losses_and_a_plain_forward_pass():
    rt = runtime({"name": "sinusoid"}, ["rmse", "mae"])
    clients = evaluation_clients(rt.data, "test")
    batch = episodes(clients, list(range(len(clients))), seed=3, split="test")
    params = rt.server.params
    got = pooled_figures(rt.learner, params, batch, 3, ["rmse", "mae"])
    per_task = rt.learner.evaluate(params, batch, 3, per_task=True)  # each task's query MSE
    assert got["rmse_after"] == pytest.approx(float(per_task["loss_after"].mean().sqrt()), rel=1e-5)
    assert got["rmse_before"] == pytest.approx(float(per_task["loss_before"].mean().sqrt()), rel=1e-5)
    plain = torch.stack([functional_call(rt.clients.model, params, (x,)) for x in batch.xq])
    assert got["mae_before"] == pytest.approx(float((plain - batch.yq).abs().mean()), rel=1e-5)
    assert set(got) == {"rmse_before", "rmse_after", "mae_before", "mae_after"}


def test_pooled_auc_and_balanced_accuracy_match_a_rank_count_and_recalls_by_hand():
    rt = runtime({"name": "digits"}, ["auc", "balanced_accuracy"], classes=2)
    clients = evaluation_clients(rt.data, "test")
    batch = episodes(clients, list(range(len(clients))), seed=3, split="test")
    params = rt.server.params
    got = pooled_figures(rt.learner, params, batch, 3, ["auc", "balanced_accuracy"])
    logits = torch.cat([functional_call(rt.clients.model, params, (x,)) for x in batch.xq])
    labels = batch.yq.reshape(-1)
    if labels.unique().numel() == 2:
        assert got["auc_before"] == pytest.approx(auc_by_ranks(logits.softmax(-1)[:, 1], labels), abs=1e-6)
    predicted = logits.argmax(-1)
    recalls = [float((predicted[labels == c] == c).double().mean()) for c in labels.unique()]
    assert got["balanced_acc_before"] == pytest.approx(sum(recalls) / len(recalls), abs=1e-9)


def test_the_weighted_cross_entropy_is_the_weighted_mean_written_out():
    torch.manual_seed(0)
    logits, labels = torch.randn(50, 3), torch.randint(0, 3, (50,))
    w = torch.tensor([1.0, 4.0, 0.5])
    per = -F.log_softmax(logits, -1)[torch.arange(50), labels]
    expected = (w[labels] * per).sum() / w[labels].sum()
    assert float(loss_for("classification", (1.0, 4.0, 0.5))(logits, labels)) == pytest.approx(float(expected), rel=1e-6)
    assert loss_for("classification", None) is F.cross_entropy and loss_for("regression", (1.0,)) is F.mse_loss


def test_class_weights_reach_every_local_procedure():
    """A weighted run differs from the unweighted one under each procedure (the weights
    are not dropped on the way), and weights of 1 give the unweighted run bit for bit."""
    base = {"name": "digits"}
    for procedure in ("fedmeta", "sgd", "perfedavg"):
        finals = []
        for weights in (None, [1.0, 1.0], [1.0, 5.0]):
            rt = runtime({**base, **({"class_weights": weights} if weights else {})}, [], classes=2,
                         clients={"procedure": procedure})
            rt.run_round()
            finals.append(torch.cat([v.reshape(-1) for v in rt.server.params.values()]))
        assert torch.equal(finals[0], finals[1]), procedure
        assert not torch.allclose(finals[0], finals[2]), procedure


@pytest.mark.parametrize("data,metrics,classes,field", [
    ({"name": "sinusoid"}, ["auc"], None, "meta.eval_metrics"),
    ({"name": "digits"}, ["rmse"], 2, "meta.eval_metrics"),
    ({"name": "digits"}, ["auc"], 3, "meta.eval_metrics"),
    ({"name": "digits", "class_weights": [1.0, 2.0, 3.0]}, [], 2, "data.class_weights"),
    ({"name": "sinusoid", "class_weights": [1.0]}, [], None, "data.class_weights"),
])
def test_options_the_task_lacks_are_refused_naming_the_field(data, metrics, classes, field):
    with pytest.raises(ConfigError) as err:
        runtime(data, metrics, classes)
    assert err.value.field == field
