"""Meta-gradients against independent references: a plain autograd loop with
create_graph=True (the learn2learn/higher style), finite differences, and the analytic
forms of FOMAML, Reptile and Meta-SGD."""

import pytest
import torch

from fedmeta.data.base import TaskBatch
from fedmeta.data.sinusoid import Sinusoid
from fedmeta.meta import ANIL, FOMAML, MAML, MetaSGD, Reptile
from fedmeta.meta.metasgd import PREFIX
from fedmeta.models import MLP, parameters_of

ALPHA = 0.05


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = MLP(1, 1, (8, 8)).double()
    batch = Sinusoid(k_shot=5, k_query=5).sample(4, torch.Generator().manual_seed(1))
    batch = type(batch)(*(t.double() for t in (batch.xs, batch.ys, batch.xq, batch.yq)))
    return model, parameters_of(model), batch


def reference_maml(model, params, batch, steps, alpha=ALPHA, lrs=None):
    """Per-task autograd loop, differentiating through the inner steps with create_graph."""
    names = list(params)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    rates = {k: v.clone().requires_grad_(True) for k, v in (lrs or {}).items()}
    total = 0.0
    for xs, ys, xq, yq in zip(batch.xs, batch.ys, batch.xq, batch.yq):
        fast = dict(leaves)
        for _ in range(steps):
            loss = torch.nn.functional.mse_loss(torch.func.functional_call(model, fast, (xs,)), ys)
            grads = torch.autograd.grad(loss, [fast[k] for k in names], create_graph=True)
            fast = {k: fast[k] - (rates[k] if rates else alpha) * g for k, g in zip(names, grads)}
        total = total + torch.nn.functional.mse_loss(
            torch.func.functional_call(model, fast, (xq,)), yq
        )
    total = total / batch.n_tasks
    wrt = list(leaves.values()) + list(rates.values())
    grads = torch.autograd.grad(total, wrt)
    out = dict(zip(names, grads[: len(names)]))
    out.update({PREFIX + k: g for k, g in zip(rates, grads[len(names) :])})
    return total.detach(), out


def close(a, b, tol=1e-9):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol, msg=k)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("steps", [1, 3])
def test_maml_matches_autograd_reference(setup, batching, steps):
    model, params, batch = setup
    learner = MAML(model, "regression", inner_steps=steps, inner_lr=ALPHA, batching=batching)
    loss, grads = learner.meta_gradient(learner.init(params), batch)
    ref_loss, ref = reference_maml(model, params, batch, steps)
    torch.testing.assert_close(loss, ref_loss)
    close(grads, ref)


def test_maml_matches_finite_differences(setup):
    model, params, batch = setup
    learner = MAML(model, "regression", inner_steps=2, inner_lr=ALPHA, batching="loop")
    _, grads = learner.meta_gradient(params, batch)
    gen = torch.Generator().manual_seed(3)
    eps = 1e-6
    for k, p in params.items():
        for _ in range(3):  # a few random coordinates of every tensor
            idx = tuple(int(torch.randint(s, (1,), generator=gen)) for s in p.shape)
            plus = {**params, k: p.clone()}
            minus = {**params, k: p.clone()}
            plus[k][idx] += eps
            minus[k][idx] -= eps
            fd = (
                learner.meta_gradient(plus, batch)[0] - learner.meta_gradient(minus, batch)[0]
            ) / (2 * eps)
            assert abs(float(fd) - float(grads[k][idx])) < 1e-6 * max(1.0, abs(float(fd))), (k, idx)


@pytest.mark.parametrize("cls", [MAML, FOMAML, Reptile, MetaSGD, ANIL])
def test_vmap_and_loop_agree(setup, cls):
    model, params, batch = setup
    results = []
    for batching in ("vmap", "loop"):
        learner = cls(model, "regression", inner_steps=2, inner_lr=ALPHA, batching=batching)
        results.append(learner.meta_gradient(learner.init(params), batch))
        results.append(learner.evaluate(learner.init(params), batch, steps=3))
    torch.testing.assert_close(results[0][0], results[2][0])
    close(results[0][1], results[2][1])
    assert results[1] == pytest.approx(results[3], rel=1e-9)


def test_fomaml_is_query_gradient_at_adapted_params(setup):
    model, params, batch = setup
    learner = FOMAML(model, "regression", inner_steps=2, inner_lr=ALPHA)
    _, grads = learner.meta_gradient(params, batch)
    expected = {k: torch.zeros_like(v) for k, v in params.items()}
    for xs, ys, xq, yq in zip(batch.xs, batch.ys, batch.xq, batch.yq):
        fast = {k: v.clone() for k, v in params.items()}
        for _ in range(2):  # plain SGD, no graph kept
            fast = {k: v.requires_grad_(True) for k, v in fast.items()}
            loss = torch.nn.functional.mse_loss(torch.func.functional_call(model, fast, (xs,)), ys)
            g = torch.autograd.grad(loss, list(fast.values()))
            fast = {k: (v - ALPHA * gi).detach() for (k, v), gi in zip(fast.items(), g)}
        fast = {k: v.requires_grad_(True) for k, v in fast.items()}
        loss = torch.nn.functional.mse_loss(torch.func.functional_call(model, fast, (xq,)), yq)
        for k, gi in zip(fast, torch.autograd.grad(loss, list(fast.values()))):
            expected[k] += gi / batch.n_tasks
    close(grads, expected)


def test_maml_minus_fomaml_is_the_hessian_term(setup):
    """One inner step: ∇MAML = (I − αH_s)∇L_q(φ), so MAML − FOMAML = −α H_s ∇L_q(φ)."""
    model, params, batch = setup
    maml = MAML(model, "regression", inner_steps=1, inner_lr=ALPHA).meta_gradient(params, batch)[1]
    fo = FOMAML(model, "regression", inner_steps=1, inner_lr=ALPHA).meta_gradient(params, batch)[1]
    names = list(params)
    flat = lambda d: torch.cat([d[k].reshape(-1) for k in names])
    unflat = lambda v: dict(zip(names, torch.split(v, [params[k].numel() for k in names])))
    expected = torch.zeros(sum(p.numel() for p in params.values()), dtype=torch.float64)
    for xs, ys, xq, yq in zip(batch.xs, batch.ys, batch.xq, batch.yq):

        def support(v, xs=xs, ys=ys):
            shaped = {k: t.reshape(params[k].shape) for k, t in unflat(v).items()}
            return torch.nn.functional.mse_loss(
                torch.func.functional_call(model, shaped, (xs,)), ys
            )

        def query(v, xq=xq, yq=yq):
            shaped = {k: t.reshape(params[k].shape) for k, t in unflat(v).items()}
            return torch.nn.functional.mse_loss(
                torch.func.functional_call(model, shaped, (xq,)), yq
            )

        theta = flat(params)
        phi = theta - ALPHA * torch.autograd.functional.jacobian(support, theta)
        gq = torch.autograd.functional.jacobian(query, phi)
        _, hvp = torch.autograd.functional.hvp(support, theta, gq)
        expected += -ALPHA * hvp / batch.n_tasks
    diff = flat(maml) - flat(fo)
    assert diff.abs().max() > 1e-4  # second derivatives matter here ...
    torch.testing.assert_close(
        diff, expected, rtol=1e-8, atol=1e-10
    )  # ... and are exactly this term


def test_first_order_equals_maml_when_inner_loop_is_empty(setup):
    model, params, batch = setup
    a = MAML(model, "regression", inner_steps=0).meta_gradient(params, batch)[1]
    b = FOMAML(model, "regression", inner_steps=0).meta_gradient(params, batch)[1]
    close(a, b, tol=0)


def test_reptile_one_step_is_the_analytic_update(setup):
    """k=1: φ = θ − α∇L(θ) on the task's pooled data, so θ − mean φ = α · mean ∇L(θ)."""
    model, params, batch = setup
    _, grads = Reptile(model, "regression", inner_steps=1, inner_lr=ALPHA).meta_gradient(
        params, batch
    )
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    expected = {k: torch.zeros_like(v) for k, v in params.items()}
    for xs, ys, xq, yq in zip(batch.xs, batch.ys, batch.xq, batch.yq):
        x, y = torch.cat([xs, xq]), torch.cat([ys, yq])
        loss = torch.nn.functional.mse_loss(torch.func.functional_call(model, leaves, (x,)), y)
        for k, g in zip(leaves, torch.autograd.grad(loss, list(leaves.values()))):
            expected[k] += ALPHA * g / batch.n_tasks
    close(grads, expected)


def test_metasgd_learns_per_parameter_rates(setup):
    model, params, batch = setup
    learner = MetaSGD(model, "regression", inner_steps=2, inner_lr=ALPHA)
    meta = learner.init(params)
    gen = torch.Generator().manual_seed(5)
    for k in params:  # distinct per-coordinate rates, so a shared-rate bug would show
        meta[PREFIX + k] = ALPHA * (
            0.5 + torch.rand(params[k].shape, generator=gen, dtype=torch.float64)
        )
    _, grads = learner.meta_gradient(meta, batch)
    _, ref = reference_maml(model, params, batch, 2, lrs={k: meta[PREFIX + k] for k in params})
    close(grads, ref)


def test_anil_adapts_only_the_head(setup):
    model, params, batch = setup
    learner = ANIL(model, "regression", inner_steps=3, inner_lr=ALPHA)
    adapted = learner.adapt(params, batch.xs[0], batch.ys[0])
    for k in params:
        if k.startswith("head."):
            assert not torch.equal(adapted[k], params[k]), k
        else:
            assert torch.equal(adapted[k], params[k]), k
    # the outer gradient still reaches the body (through the head's inner steps)
    _, grads = learner.meta_gradient(params, batch)
    assert all(grads[k].abs().sum() > 0 for k in params)


@pytest.mark.parametrize("cls", [MAML, ANIL])
def test_conv4_with_batch_norm_vmap_matches_loop(cls):
    """Batch statistics make the order of grad and vmap matter; both paths must agree."""
    from fedmeta.data.base import TaskBatch
    from fedmeta.models import Conv4

    torch.manual_seed(0)
    model = Conv4(1, 3, filters=4, image_size=8).double()
    params = parameters_of(model)
    g = torch.Generator().manual_seed(0)
    xs, xq = (
        torch.rand(3, 3, 1, 8, 8, generator=g).double(),
        torch.rand(3, 6, 1, 8, 8, generator=g).double(),
    )
    ys, yq = torch.tensor([[0, 1, 2]] * 3), torch.tensor([[0, 1, 2, 0, 1, 2]] * 3)
    batch = TaskBatch(xs, ys, xq, yq)
    out = [
        cls(model, "classification", inner_steps=2, inner_lr=0.1, batching=b).meta_gradient(
            params, batch
        )
        for b in ("vmap", "loop")
    ]
    torch.testing.assert_close(out[0][0], out[1][0])
    close(out[0][1], out[1][1], tol=1e-9)


@pytest.mark.parametrize("cls", [MAML, FOMAML, ANIL])
def test_classification_mlp_batched_matches_plain_loop(cls):
    """Cross-entropy on an MLP through the batched (factored) path against a plain autograd loop."""
    torch.manual_seed(0)
    model = MLP(6, 3, (8, 8)).double()
    params = parameters_of(model)
    g = torch.Generator().manual_seed(2)
    batch = TaskBatch(
        torch.randn(4, 6, 6, generator=g, dtype=torch.float64),
        torch.randint(3, (4, 6), generator=g),
        torch.randn(4, 9, 6, generator=g, dtype=torch.float64),
        torch.randint(3, (4, 9), generator=g),
    )
    loss, grads = cls(
        model, "classification", inner_steps=2, inner_lr=0.3, batching="vmap"
    ).meta_gradient(params, batch)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    ce = torch.nn.functional.cross_entropy
    total = 0.0
    for xs, ys, xq, yq in zip(batch.xs, batch.ys, batch.xq, batch.yq):
        fast = dict(leaves)
        for _ in range(2):
            names = [k for k in fast if cls is not ANIL or k.startswith("head.")]
            inner = ce(torch.func.functional_call(model, fast, (xs,)), ys)
            gs = torch.autograd.grad(
                inner, [fast[k] for k in names], create_graph=cls is not FOMAML
            )
            fast = {**fast, **{k: fast[k] - 0.3 * gk for k, gk in zip(names, gs)}}
        total = total + ce(torch.func.functional_call(model, fast, (xq,)), yq) / batch.n_tasks
    ref = dict(zip(leaves, torch.autograd.grad(total, list(leaves.values()))))
    torch.testing.assert_close(loss, total.detach())
    close(grads, ref)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("cls", [MAML, FOMAML, MetaSGD])
def test_meta_gradient_under_vmap_over_clients(setup, cls, batching):
    """The federated runtime vmaps meta_gradient over clients (torch.func inside transforms)."""
    model, params, batch = setup
    learner = cls(model, "regression", inner_steps=2, inner_lr=ALPHA, batching=batching)
    meta = learner.init(params)
    clients = [t.reshape(2, 2, *t.shape[1:]) for t in (batch.xs, batch.ys, batch.xq, batch.yq)]
    losses, grads = torch.func.vmap(lambda *b: learner.meta_gradient(meta, TaskBatch(*b)))(*clients)
    for c in range(2):
        loss, expected = learner.meta_gradient(meta, TaskBatch(*(t[c] for t in clients)))
        torch.testing.assert_close(losses[c], loss)
        close({k: v[c] for k, v in grads.items()}, expected)


def test_evaluate_under_no_grad(setup):
    model, params, batch = setup
    learner = MAML(model, "regression", inner_steps=2, inner_lr=ALPHA, batching="loop")
    with torch.no_grad():
        quiet = learner.evaluate(params, batch)
    assert quiet == pytest.approx(learner.evaluate(params, batch), rel=1e-12)


@pytest.mark.slow
def test_compiled_query_pass_matches_reference(setup):
    """compile_query changes how the query pass runs (torch.compile), not what it computes."""
    model, params, batch = setup
    learner = MAML(
        model, "regression", inner_steps=2, inner_lr=ALPHA, batching="loop", compile_query=True
    )
    loss, grads = learner.meta_gradient(params, batch)
    ref_loss, ref = reference_maml(model, params, batch, 2)
    torch.testing.assert_close(loss, ref_loss)
    close(grads, ref)
