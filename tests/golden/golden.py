"""Golden runs: a matrix of small federated configs whose results are recorded once and
must be reproduced bit for bit by every later version of the runtime.

Each run uses `privacy.noise_seed` (where DP noise is drawn), a fixed run id and fixed
Ed25519 keys, so its final parameters, every metrics row and the ledger root are a
function of the code alone. Recorded: the SHA-256 of the final parameters (names, dtypes,
shapes and bytes in name order), every row of `metrics.jsonl` and the summary (wall-clock
figures left out), and the ledger root sealed into `summary.json`.

CKKS runs are the exception: CKKS encryption draws fresh noise that no seed reaches, so
their parameters are compared to 1e-6 and their ledger root is not recorded; the same holds
for the ledger of a deployed SecAgg+ run (its masked inputs depend on fresh session keys).

Record (only for an intended change, in its own commit that says why):

    .venv/bin/python tests/golden/golden.py --record
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import sys
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RECORDED = HERE / "runs.json"
SINUSOID = dict(rounds=3, n_clients=8, held_out_clients=4, clients_per_round=4, local_steps=2,
                tasks_per_step=2, local_lr=0.01, eval_every=2)
CENTRAL = {"dp": "central", "noise_multiplier": 0.8, "clip_norm": 0.5, "delta": 1e-5, "noise_seed": 11}
EXAMPLE = {"dp": "example", "noise_multiplier": 1.0, "example_sample_rate": 0.5, "clip_norm": 1.0,
           "delta": 1e-5, "noise_seed": 7}
ROBUST = dict(n_clients=10, clients_per_round=6, held_out_clients=3)


def case(data: str = "sinusoid", *, privacy: dict | None = None, meta: dict | None = None, signed: bool = False,
         deploy: int = 0, tolerance: float = 0.0, ledger_root: bool = True, **federated: Any) -> dict[str, Any]:
    base = dict(SINUSOID) if data == "sinusoid" else dict(rounds=2, n_clients=6, held_out_clients=2, clients_per_round=3,
                                                          local_steps=2, tasks_per_step=2, local_lr=0.05, eval_every=1)
    base.update(federated)
    raw = {
        "run": {"seed": 3},
        "data": {"name": data, **({"k_shot": 5, "k_query": 5} if data in ("sinusoid", "omniglot") else {})},
        "model": {"name": "mlp", "hidden": [16, 16]},
        "meta": {"inner_lr": 0.01 if data == "sinusoid" else 0.05, "eval_inner_steps": 2, **(meta or {})},
        "federated": base,
        "privacy": privacy or {},
        "ledger": {"enabled": True},
    }
    if data == "digits":
        raw["data"]["test_classes"] = [5, 6, 7, 8, 9]
    return {"raw": raw, "signed": signed, "deploy": deploy, "tolerance": tolerance, "ledger_root": ledger_root}


MATRIX: dict[str, dict[str, Any]] = {
    # local procedures
    "sgd": case(local_procedure="sgd"),
    "fedprox": case(local_procedure="fedprox", mu=0.1),
    "fedmeta-maml": case(),
    "fedmeta-fomaml": case(meta={"algorithm": "fomaml"}),
    "fedmeta-reptile": case(meta={"algorithm": "reptile", "inner_steps": 2}),
    "fedmeta-anil": case(meta={"algorithm": "anil"}),
    "fedmeta-metasgd": case(meta={"algorithm": "metasgd"}),
    "perfedavg-fo": case(local_procedure="perfedavg"),
    "perfedavg-hf": case(local_procedure="perfedavg", perfedavg_variant="hf"),
    "heterogeneous-steps": case(local_steps=3, local_steps_min=1),
    "looped-clients": case(local_steps=3, local_steps_min=1, client_batching="loop"),
    "digits-fedmeta": case("digits"),
    "synthetic-sgd": case("synthetic", local_procedure="sgd"),
    # server strategies
    "fedavgm": case(strategy="fedavgm", server_lr=0.5),
    "fedadam": case(strategy="fedadam", server_lr=0.01),
    "fedyogi": case(strategy="fedyogi", server_lr=0.01),
    "fedadagrad": case(strategy="fedadagrad", server_lr=0.01),
    # differential privacy
    "dp-central": case(privacy=CENTRAL),
    "dp-central-clip-only": case(privacy={**CENTRAL, "noise_multiplier": 0.0}),
    "dp-local": case(privacy={**CENTRAL, "dp": "local"}),
    "dp-adaptive-central": case(privacy={**CENTRAL, "clipping": "adaptive", "clip_count_stddev": 1.0}),
    "dp-adaptive-local": case(privacy={**CENTRAL, "dp": "local", "clipping": "adaptive", "clip_count_stddev": 1.0}),
    "dp-budget-stop": case(privacy={**CENTRAL, "noise_multiplier": 1.0, "target_epsilon": 8.0}, rounds=6),
    "dp-example-fomaml": case("synthetic", privacy=EXAMPLE, meta={"algorithm": "fomaml"}),
    "dp-example-sgd": case("synthetic", privacy=EXAMPLE, local_procedure="sgd"),
    "dp-example-fedprox-digits": case("digits", privacy=EXAMPLE, local_procedure="fedprox", mu=0.1),
    # secure sums
    "secagg": case(privacy={"secure_aggregation": "secagg", "secagg_clip": 2.0}),
    "secagg-plus-central": case(privacy={**CENTRAL, "secure_aggregation": "secagg+"}),
    "secagg-adaptive-local": case(privacy={**CENTRAL, "dp": "local", "clipping": "adaptive", "clip_count_stddev": 1.0,
                                           "secure_aggregation": "secagg"}),
    "secagg-example": case("synthetic", privacy={**EXAMPLE, "secure_aggregation": "secagg+", "secagg_clip": 2.0},
                           meta={"algorithm": "fomaml"}),
    "ckks": case(privacy={"secure_aggregation": "ckks"}, tolerance=1e-6, ledger_root=False),
    "ckks-central": case(privacy={**CENTRAL, "secure_aggregation": "ckks"}, tolerance=1e-6, ledger_root=False),
    # robust rules and attacks
    "median-sign-flip": case(**ROBUST, aggregator="median", attack="sign_flip", malicious_fraction=0.2),
    "trimmed-scaling": case(**ROBUST, aggregator="trimmed_mean", trim_fraction=0.2, attack="scaling",
                            malicious_fraction=0.2, attack_scale=5.0),
    "krum-gaussian": case(**ROBUST, aggregator="krum", byzantine_clients=1, attack="gaussian", malicious_fraction=0.2),
    "multikrum-lie": case(**ROBUST, aggregator="multikrum", byzantine_clients=1, krum_selected=3,
                          attack="little_is_enough", malicious_fraction=0.2),
    "geomed-sign-flip": case(**ROBUST, aggregator="geometric_median", attack="sign_flip", malicious_fraction=0.2),
    "norm-bound-scaling": case(**ROBUST, aggregator="norm_bound", norm_bound=0.5, attack="scaling", malicious_fraction=0.2),
    "mean-gaussian": case(**ROBUST, attack="gaussian", malicious_fraction=0.2, attack_noise_std=0.5),
    # compression, signatures, dropouts
    "topk": case(compression="topk", topk_fraction=0.3),
    "int8": case(compression="int8"),
    "signed": case(signed=True),
    "dropouts-retries": case(dropout_rate=0.3, straggler_rate=0.2, min_clients=2, max_retries=5, rounds=4),
    "signed-dropouts-dp": case(signed=True, privacy=CENTRAL, dropout_rate=0.3, min_clients=2, max_retries=5),
    # the Flower runtime over a loopback grid (ServerApp and ClientApp handlers in-process)
    "deploy-fomaml": case("synthetic", deploy=3, meta={"algorithm": "fomaml", "inner_steps": 1}, n_clients=3,
                          clients_per_round=2),
    "deploy-example-topk": case("synthetic", deploy=3, privacy=EXAMPLE, meta={"algorithm": "fomaml"}, n_clients=3,
                                clients_per_round=3, compression="topk", topk_fraction=0.3),
    "deploy-signed-central": case("synthetic", deploy=3, signed=True, privacy=CENTRAL, meta={"algorithm": "fomaml"},
                                  n_clients=3, clients_per_round=3),
    "deploy-secagg-plus": case("synthetic", deploy=3, privacy={**EXAMPLE, "secure_aggregation": "secagg+",
                                                               "secagg_clip": 2.0},
                               meta={"algorithm": "fomaml"}, n_clients=3, clients_per_round=3, ledger_root=False),
}

TIMING = ("seconds", "he_max_abs_error")  # keys that measure time or fresh CKKS noise


def fingerprint() -> dict[str, str]:
    """What the float results depend on besides the code: library versions and the CPU's
    vector instructions (torch picks kernels by them)."""
    return {"torch": torch.__version__, "numpy": np.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def fixed_key(name: str):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"fedmeta golden {name}".encode()).digest())


def params_sha256(params: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(params):
        t = params[name].detach().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def strip(row: Any) -> Any:
    """A row without wall-clock figures (any key naming seconds) and CKKS's error estimate."""
    if isinstance(row, dict):
        return {k: strip(v) for k, v in row.items() if not any(t in k for t in TIMING)}
    if isinstance(row, list):
        return [strip(v) for v in row]
    return row


@contextlib.contextmanager
def fixed_identity(folder: Path):
    """A fixed run id and server key, so the ledger root is a function of the code alone."""
    import os

    from fedmeta.ledger import keys

    keys.save_private_key(fixed_key("server"), folder / "server_key.pem")
    ids = iter(uuid.UUID(int=i) for i in range(1, 1 << 20))
    saved_uuid4, saved_home = uuid.uuid4, os.environ.get("FEDMETA_HOME")
    uuid.uuid4 = lambda: next(ids)
    os.environ["FEDMETA_HOME"] = str(folder)
    try:
        yield
    finally:
        uuid.uuid4 = saved_uuid4
        if saved_home is None:
            os.environ.pop("FEDMETA_HOME")
        else:
            os.environ["FEDMETA_HOME"] = saved_home


def client_key_folder(folder: Path, n: int) -> dict[str, str]:
    from fedmeta.ledger import keys

    (folder / "keys").mkdir()
    registered = {}
    for cid in range(n):
        key = fixed_key(f"client {cid}")
        keys.save_private_key(key, folder / "keys" / f"{cid}.pem")
        registered[str(cid)] = keys.public_key_hex(key)
    return registered


def loopback_grid(n: int):
    """The deploy tests' loopback grid: each message handled by the ClientApp's handlers here."""
    import importlib.util

    from flwr.supercore.task_identity import TaskIdentity

    spec = importlib.util.spec_from_file_location("deploy_conftest", HERE.parent / "deploy" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # tests/deploy/conftest.py, whatever `conftest` is imported already

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 0)):
        setattr(TaskIdentity, name, value)
    return module.LoopbackGrid(n)


def run_case(name: str, folder: Path) -> dict[str, Any]:
    """Run one golden case in `folder` (empty) and return what is recorded of it."""
    from fedmeta.config import Config
    from fedmeta.federated.driver import run_federated
    from fedmeta.federated.runtime import Runtime
    from fedmeta.rundir import RunDir

    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's per-order RDP notes
    spec = MATRIX[name]
    raw = json.loads(json.dumps(spec["raw"]))
    with fixed_identity(folder), contextlib.chdir(folder):
        if spec["signed"]:
            n = raw["federated"]["n_clients"]
            raw["ledger"].update(participants=client_key_folder(folder, n),
                                 client_keys=None if spec["deploy"] else "keys")  # relative: one config hash
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = Config.model_validate(raw)
            run = RunDir.create(folder / "run", cfg)
            if spec["deploy"]:
                from fedmeta.deploy.transport import FlowerTransport

                grid = loopback_grid(spec["deploy"])
                if spec["signed"]:
                    for ctx in grid.contexts.values():
                        ctx.node_config["key"] = str(folder / "keys" / f"{ctx.node_config['partition-id']}.pem")
                runtime = Runtime(cfg, lambda _: FlowerTransport(cfg, grid, min_nodes=spec["deploy"], wait=5, deadline=60))
                summary = run_federated(cfg, run, show_progress=False, runtime=runtime)
            else:
                summary = run_federated(cfg, run, show_progress=False)
            run.close()
    params = torch.load(run.path / "model.pt", weights_only=True)
    out = {
        "params_sha256": params_sha256(params),
        "metrics": strip(run.metrics()),
        "summary": strip({k: v for k, v in summary.items() if k != "ledger"}),
    }
    if spec["ledger_root"]:
        out["ledger_root"] = summary["ledger"]["root"]
    if spec["tolerance"]:
        out["params"] = {k: v.double().flatten().tolist() for k, v in sorted(params.items())}
    return out


def record(names: list[str]) -> None:
    recorded = json.loads(RECORDED.read_text()) if RECORDED.exists() else {"runs": {}}
    recorded["fingerprint"] = fingerprint()
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            recorded["runs"][name] = run_case(name, Path(tmp))
        print(f"recorded {name}", file=sys.stderr)
    recorded["runs"] = {k: recorded["runs"][k] for k in MATRIX if k in recorded["runs"]}
    RECORDED.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", action="store_true", required=True)
    parser.add_argument("names", nargs="*", help="cases to record (default: all)")
    args = parser.parse_args()
    record(args.names or list(MATRIX))
