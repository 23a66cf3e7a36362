"""Example-level DP-SGD inside a client's local procedure (Abadi et al., CCS 2016, "Deep
Learning with Differential Privacy"), for local training and first-order meta-updates.

The protected unit is one example of one client's `ExampleClient` (x, y); the guarantee
holds against everyone outside the client, the server included. Each local step draws a
Poisson sample of the client's n examples at rate q and every example is given a fair
coin (support or query half). Gradients are per example (`torch.func.vmap`), clipped to
L2 norm C, summed, noised with N(0, σ²C²) and divided by a fixed divisor (q·n, or q·n/2
per half: the realised size would leak). The client's n is treated as public, as in
Opacus and TF Privacy (its aggregation weight reveals it anyway).

- local training (FedAvg, FedProx): one noised gradient per step; FedProx's proximal
  term μ(θ − θ_global) is data-independent and is not clipped. k = 1.
- FOMAML (Finn et al. 2017) and ANIL (Raghu et al. 2020): the inner steps are DP-SGD
  steps on the support half (ANIL: on the head only, the body stays put); the outer
  gradient is the per-example clipped, noised query-half gradient at the adapted
  parameters, treated as constants. ANIL's outer gradient is therefore first order
  under DP. k = inner_steps + 1.
- Reptile (Nichol et al. 2018): the inner steps are DP-SGD steps on the whole sample
  and θ − φ is their post-processing. k = inner_steps.
Second-order MAML, Meta-SGD (its learned rates need the second-order path) and
Per-FedAvg are refused: their meta-gradient carries every support example into every
query term, so no per-example clip bounds it.

Accounting. Given the coin of an added or removed example, a local step is an adaptive
composition of at most k Gaussian mechanisms with sensitivity C and noise σC on the same
sample (an example in the support half also moves the outer gradient, but only through
released noisy outputs). k such mechanisms are exactly one Gaussian with multiplier σ/√k
(McMahan et al. 2018, arXiv:1812.06210, §3; dp-accounting's RDP reduces composed
subevents the same way). The coin makes the step a mixture over the added example's
randomness, which by joint convexity of the hockey-stick divergence (Balle, Barthe &
Gaboardi, NeurIPS 2018) is dominated by the same Gaussian pair; dominating pairs compose
adaptively and carry through Poisson subsampling (Zhu, Dong & Wang, AISTATS 2022), so a
step costs `PoissonSampledDpEvent(q, GaussianDpEvent(σ/√k))` (exact for local training
and Reptile; an upper bound for FOMAML and ANIL, where an example meets either the inner
mechanisms or the outer one, never all k). Clients are sampled by the server, which knows the
sample, so there is no amplification by client sampling: each round costs
`local_steps` such steps for every client, whether or not it took part.

On a device (`run.device`) the steps compute there. The sample and its coins are drawn on
the CPU from the client's numpy generator, then moved; the noise is drawn on the CPU too
and moved to the gradient's device (`fedmeta.privacy.noise.gaussian_like`).

Batch norm cannot be per example (Conv4's statistics over one 1×1 feature map are
degenerate, and batch statistics mix examples): models with batch norm are refused.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fedmeta.config import EXAMPLE_DATA, EXAMPLE_DP_ALGORITHMS
from fedmeta.data.base import Kind
from fedmeta.data.federated import ExampleClient
from fedmeta.errors import BadInput, ConfigError
from fedmeta.meta import ANIL, MetaLearner, MetaSGD, Params, Reptile
from fedmeta.meta.base import loss_for
from fedmeta.privacy.accountant import same_sample_noise_multiplier
from fedmeta.privacy.dpsgd import LossFn, poisson_sample, private_grad
from fedmeta.privacy.noise import secure_rng

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class Sample:
    """One local step's private batch: a Poisson sample of a client's examples."""

    x: Tensor  # (m, *x_shape)
    y: Tensor  # (m,) labels or (m, out) targets
    support: Tensor  # (m,) bool: each example's half for FOMAML and ANIL
    expected: float  # q·n, the expected sample size (the fixed divisor)

    def to(self, device: torch.device) -> Sample:
        return Sample(self.x.to(device), self.y.to(device), self.support.to(device), self.expected)


def draw_sample(client: ExampleClient, sample_rate: float, rng: np.random.Generator) -> Sample:
    """Each example kept with probability q, then a fair coin for its half."""
    idx = poisson_sample(client.n_examples, sample_rate, rng)  # (m,)
    support = torch.from_numpy(rng.random(len(idx)) < 0.5)  # (m,)
    return Sample(client.x[idx], client.y[idx], support, sample_rate * client.n_examples)


@dataclass
class PrivateLocal:
    """A client's local procedure under example-level DP; `learner=None` is local training
    (FedAvg, or FedProx with μ > 0), a FOMAML, ANIL or Reptile learner makes it FedMeta."""

    model: nn.Module
    kind: Kind
    lr: float
    _: KW_ONLY
    sample_rate: float
    clip_norm: float
    noise_multiplier: float
    mu: float = 0.0
    learner: MetaLearner | None = None
    class_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not 0 < self.sample_rate <= 1:
            raise ConfigError("privacy.example_sample_rate", self.sample_rate, "a rate q in (0, 1]")
        if not self.clip_norm > 0:
            raise ConfigError("privacy.clip_norm", self.clip_norm, "C > 0")
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ConfigError("privacy.noise_multiplier", self.noise_multiplier, "a finite σ >= 0")
        if self.noise_multiplier > 0 and math.isinf(self.clip_norm):
            raise ConfigError(
                "privacy.clip_norm", self.clip_norm, "finite when privacy.noise_multiplier > 0"
            )
        if any(isinstance(m, BATCH_NORMS) for m in self.model.modules()):
            raise ConfigError(
                "model.name",
                type(self.model).__name__.lower(),
                "a model without batch norm with privacy.dp = 'example'",
            )
        learner = self.learner
        if learner is not None:
            first_order = isinstance(learner, (ANIL, Reptile)) or (
                learner.first_order and not isinstance(learner, MetaSGD)
            )
            if not first_order:
                raise ConfigError(
                    "meta.algorithm",
                    type(learner).__name__.lower(),
                    f"one of {', '.join(EXAMPLE_DP_ALGORITHMS)} with privacy.dp = 'example'",
                )
            if isinstance(learner, Reptile) and learner.inner_steps < 1:
                raise ConfigError(
                    "meta.inner_steps",
                    learner.inner_steps,
                    "at least 1 for Reptile with privacy.dp = 'example'",
                )
        self.loss = loss_for(self.kind, self.class_weights)

    # -- accounting -----------------------------------------------------------------------
    @property
    def evaluations(self) -> int:
        """k: noised gradient evaluations on one local step's sample."""
        if self.learner is None:
            return 1
        return self.learner.inner_steps + (0 if isinstance(self.learner, Reptile) else 1)

    def round_steps(self, local_steps: int) -> dict[str, float | int]:
        """Keyword arguments of `Accountant.step` (and `would_exceed`) for one round: every
        client's examples pay `local_steps` steps of PoissonSampled(q, Gaussian(σ/√k))."""
        return {
            "noise_multiplier": same_sample_noise_multiplier(
                self.noise_multiplier, self.evaluations
            ),
            "sample_rate": self.sample_rate,
            "steps": local_steps,
        }

    # -- the procedure --------------------------------------------------------------------
    def _loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        return self.loss(torch.func.functional_call(self.model, params, (x,)), y)

    def _grad(
        self,
        loss_fn: LossFn,
        params: Params,
        x: Tensor,
        y: Tensor,
        divisor: float,
        rng: np.random.Generator | None,
    ) -> Params:
        return private_grad(
            loss_fn,
            params,
            x,
            y,
            max_grad_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            expected_batch_size=divisor,
            rng=rng,
        )

    def adapt(
        self, params: Params, x: Tensor, y: Tensor, divisor: float, rng: np.random.Generator | None
    ) -> Params:
        """The learner's inner loop as DP-SGD steps on (x, y): only the parameters the
        learner adapts (ANIL: the head) are differentiated, clipped and noised."""
        learner = self.learner
        fast = {k: v for k, v in params.items() if learner.adapts(k)}
        frozen = {k: v for k, v in params.items() if k not in fast}

        def loss(f: Params, xb: Tensor, yb: Tensor) -> Tensor:
            return self._loss({**frozen, **f}, xb, yb)

        for _ in range(learner.inner_steps):
            fast = learner.inner_step(params, fast, self._grad(loss, fast, x, y, divisor, rng))
        return {**frozen, **fast}

    def step(
        self, params: Params, anchor: Params, sample: Sample, rng: np.random.Generator | None
    ) -> Params:
        """One local step on one Poisson sample; `anchor` is the round's global model."""
        if self.learner is None:
            g = self._grad(self._loss, params, sample.x, sample.y, sample.expected, rng)
            return {k: p - self.lr * (g[k] + self.mu * (p - anchor[k])) for k, p in params.items()}
        if isinstance(self.learner, Reptile):
            phi = self.adapt(params, sample.x, sample.y, sample.expected, rng)
            return {k: p - self.lr * (p - phi[k]) for k, p in params.items()}
        s, half = sample.support, sample.expected / 2
        phi = self.adapt(params, sample.x[s], sample.y[s], half, rng)
        g = self._grad(self._loss, phi, sample.x[~s], sample.y[~s], half, rng)
        return {k: p - self.lr * g[k] for k, p in params.items()}

    def run(
        self,
        params: Params,
        client: ExampleClient,
        n_steps: int,
        rng: np.random.Generator | None = None,
    ) -> Params:
        """Δ = θ_local − θ after `n_steps` private local steps from θ = `params`.

        `rng=None` draws samples, coins and noise from fresh OS entropy every step (see
        `fedmeta.privacy.noise`); pass a seeded generator only for reproducible experiments.
        """
        if not isinstance(client, ExampleClient):
            raise ConfigError(
                "data.name",
                type(client).__name__,
                f"clients holding examples ({', '.join(EXAMPLE_DATA)}) with privacy.dp = 'example'",
            )
        if not (isinstance(n_steps, int) and n_steps >= 0):
            raise BadInput("n_steps", n_steps, "an integer >= 0")
        anchor = {k: v.detach() for k, v in params.items()}
        current, device = anchor, next((v.device for v in anchor.values()), torch.device("cpu"))
        for _ in range(n_steps):
            step_rng = rng if rng is not None else secure_rng()
            sample = draw_sample(client, self.sample_rate, step_rng).to(device)
            current = self.step(current, anchor, sample, step_rng)
        return {k: current[k] - anchor[k] for k in anchor}
