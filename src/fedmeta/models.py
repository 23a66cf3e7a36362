"""Standard small networks of the meta-learning literature, used functionally.

`MLP` is the sinusoid regressor of Finn et al. 2017 (1-40-40-1, ReLU). `Conv4` is the
four-block convolutional net of Vinyals et al. 2016 as used by MAML: each block is a 3x3
convolution, batch norm without running statistics (batch statistics at train and test
time, as MAML does), ReLU and 2x2 max-pooling; a linear head maps the features to the
classes. Heads are named `head.*` so ANIL can adapt them alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

HEAD = "head."


class MLP(nn.Module):
    def __init__(self, n_inputs: int, n_outputs: int, hidden: tuple[int, ...] = (40, 40)):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_outputs)

    def forward(self, x: Tensor) -> Tensor:  # (batch, *in) -> (batch, out)
        return self.head(self.body(x.flatten(1)))


class EmbeddingMLP(nn.Module):
    """An MLP over a table row whose index columns (an item's id) are first replaced by a
    learned embedding of `dim` numbers each (`embeddings`: (column, vocabulary size)), as
    recommenders embed items (e.g. MeLU, Lee et al. 2019); every other column goes in as
    it is."""

    def __init__(self, n_inputs: int, n_outputs: int, hidden: tuple[int, ...],
                 embeddings: list[tuple[int, int]], dim: int = 8):
        super().__init__()
        self.columns = [c for c, _ in embeddings]
        self.rest = [i for i in range(n_inputs) if i not in set(self.columns)]
        self.embed = nn.ModuleList(nn.Embedding(size, dim) for _, size in embeddings)
        self.mlp = MLP(len(self.rest) + dim * len(embeddings), n_outputs, hidden)
        self.head = self.mlp.head  # ANIL adapts `head.*`

    def forward(self, x: Tensor) -> Tensor:  # (batch, columns) -> (batch, out)
        parts = [x[:, self.rest]] + [e(x[:, c].long()) for c, e in zip(self.columns, self.embed, strict=True)]
        return self.mlp(torch.cat(parts, dim=1))


class Conv4(nn.Module):
    def __init__(self, in_channels: int, n_outputs: int, filters: int = 64, image_size: int = 28):
        super().__init__()
        blocks: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(4):
            blocks += [
                nn.Conv2d(channels, filters, 3, padding=1),
                nn.BatchNorm2d(filters, track_running_stats=False),
                nn.ReLU(),
                nn.MaxPool2d(2) if size >= 2 else nn.Identity(),
            ]
            channels, size = filters, max(1, size // 2)
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(filters * size * size, n_outputs)

    def forward(self, x: Tensor) -> Tensor:  # (batch, C, H, W) -> (batch, classes)
        return self.head(self.body(x).flatten(1))


def build_model(name: str, x_shape: tuple[int, ...], n_outputs: int, **kw) -> nn.Module:
    """The network for a task distribution's input shape and output size."""
    if name == "mlp" and kw.get("embeddings"):
        return EmbeddingMLP(int(torch.tensor(x_shape).prod()), n_outputs, tuple(kw.get("hidden", (40, 40))),
                            kw["embeddings"], kw.get("embedding_dim") or 8)
    if name == "mlp":
        return MLP(int(torch.tensor(x_shape).prod()), n_outputs, tuple(kw.get("hidden", (40, 40))))
    if name == "conv4":
        return Conv4(x_shape[0], n_outputs, kw.get("filters", 64), x_shape[-1])
    raise ValueError(f"unknown model {name!r}")


def parameters_of(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the model's parameters: the state that meta-learners transform."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}
