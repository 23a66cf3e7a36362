"""The in-process runtime against independent references: plain SGD, FedProx(μ=0) =
FedAvg, batched = looped clients, poisoned updates rejected, dropouts and retries."""

import copy

import pytest
import torch

from fedmeta.errors import FedmetaError
from fedmeta.federated.runtime import Runtime
from fedmeta.federated.sampling import CLIENT, generator
from fedmeta.federated.transport import Reply
from fedmeta.federated.wire import encode, raw


def test_one_client_one_step_fedavg_is_plain_sgd(config):
    cfg = config("digits", n_clients=1, held_out_clients=0, clients_per_round=1, local_steps=1,
                      tasks_per_step=1, local_procedure="sgd", local_lr=0.1, partition="shards", shards_per_client=1)
    runtime = Runtime(cfg)
    theta0 = {k: v.clone() for k, v in runtime.params.items()}
    gen = generator(cfg.run.seed, 1, 0, CLIENT + 0)  # replay the client's own stream: its episodes
    eps, _ = runtime.clients.training.episodes([0], gen)[0]
    runtime.run_round()
    model = copy.deepcopy(runtime.clients.model)
    model.load_state_dict(theta0)
    x = torch.cat([eps.xs[0, 0], eps.xq[0, 0]])
    y = torch.cat([eps.ys[0, 0], eps.yq[0, 0]])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(runtime.params[name], theta0[name] - 0.1 * p.grad)


def run(cfg, rounds=2):
    runtime = Runtime(cfg)
    for _ in range(rounds):
        runtime.run_round()
    return runtime.params


def test_fedprox_with_zero_mu_equals_fedavg(config):
    a = run(config("digits", local_procedure="sgd"))
    b = run(config("digits", local_procedure="fedprox", mu=0.0))
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = run(config("digits", local_procedure="fedprox", mu=1.0))
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize(
    "procedure", [dict(local_procedure="fedmeta"), dict(local_procedure="sgd"), dict(local_procedure="perfedavg", perfedavg_variant="hf"),
                  dict(local_procedure="fedmeta", meta={"algorithm": "metasgd"}), dict(local_procedure="fedmeta", meta={"algorithm": "reptile"})]
)
def test_batched_and_looped_clients_agree(config, procedure):
    kw = dict(local_steps=3, local_steps_min=1, **procedure)
    a = run(config("sinusoid", client_batching="vmap", **copy.deepcopy(kw)), rounds=1)
    b = run(config("sinusoid", client_batching="loop", **copy.deepcopy(kw)), rounds=1)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_poisoned_updates_are_rejected_and_change_nothing(config):
    cfg = config("digits", local_procedure="sgd")
    clean, dirty = Runtime(cfg), Runtime(cfg)
    replies = clean.exchange(1)
    poisoned = copy.deepcopy(replies)
    good = next(iter(replies.replies))
    nan = {k: raw(torch.full_like(v, float("nan"))) for k, v in clean.params.items()}
    shape = {k: raw(torch.zeros(v.numel() + 1)) for k, v in clean.params.items()}
    f64 = {k: raw(v).__class__("raw", tuple(v.shape), (v.double().numpy().ravel(),)) for k, v in clean.params.items()}
    for cid, payload in ((901, nan), (902, shape), (903, f64)):
        poisoned.replies[cid] = Reply(encode(payload), 1e6)  # heavily weighted: any leak would show
    poisoned.replies[904] = Reply(b"garbage", 1.0)
    honest, admitted = clean.server.admission(replies, 1, clean.params), dirty.server.admission(poisoned, 1, dirty.params)
    assert honest.rejected == {} and good not in admitted.rejected
    assert set(admitted.rejected) == {901, 902, 903, 904}
    rejected = admitted.rejected
    assert "non-finite" in rejected[901] and "shape" in rejected[902] and "dtype" in rejected[903] and "malformed" in rejected[904]
    expected, got = clean.server.aggregate(honest, 1).delta, dirty.server.aggregate(admitted, 1).delta
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_dropouts_below_minimum_retry_then_stop_with_a_clear_error(config):
    cfg = config("sinusoid", dropout_rate=0.99, min_clients=2, max_retries=2)
    with pytest.raises(FedmetaError, match="min_clients = 2"):
        Runtime(cfg).run_round()
    ok = Runtime(config("sinusoid", dropout_rate=0.5, min_clients=1, max_retries=20, clients_per_round=8, held_out_clients=0))
    info = ok.run_round().row
    assert info["dropped"] > 0 and info["clients"] + info["dropped"] == info["sampled"] == 8


def test_failing_client_is_dropped_not_fatal(config, monkeypatch):
    runtime = Runtime(config("sinusoid", client_batching="vmap"))
    original = runtime.clients.training.procedure.step
    calls = {"n": 0}

    def flaky(params, anchor, episodes):
        calls["n"] += 1
        if calls["n"] <= 2:  # fails the vmapped chunk, then the first client when looped
            raise RuntimeError("disk full")
        return original(params, anchor, episodes)

    monkeypatch.setattr(runtime.clients.training.procedure, "step", flaky)
    info = runtime.run_round().row
    assert info["dropped"] == 1 and info["clients"] == 3
