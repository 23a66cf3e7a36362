"""An optional TensorBoard sink (`run.tensorboard = true`): every metrics row a run
publishes becomes scalars in `<run folder>/tensorboard`, tagged `<split>/<figure>` at step =
the round, next to `metrics.jsonl` (which stays the record). Needs the `tensorboard`
package (`pip install 'fedmeta[tracking]'`); a config that asks for it without the package
is refused before the run starts.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from fedmeta.errors import ConfigError

FOLDER = "tensorboard"


def check_tensorboard(cfg: Any) -> None:
    """`run.tensorboard = true` needs the tensorboard package."""
    if not cfg.run.tensorboard:
        return
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ConfigError("run.tensorboard", True, "false, or install TensorBoard (pip install tensorboard)") from None


class TensorBoardSink:
    """Writes metrics rows as scalars; `None`-valued and non-numeric fields are skipped."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / FOLDER))

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            split, step = row.get("split", "round"), int(row.get("round", 0))
            for key, value in row.items():
                if key in ("round", "split") or isinstance(value, bool) or not isinstance(value, numbers.Real):
                    continue
                self.writer.add_scalar(f"{split}/{key}", float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
