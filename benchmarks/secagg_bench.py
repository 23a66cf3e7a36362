"""Secure aggregation cost: fedmeta SecAgg/SecAgg+ vs a plaintext sum vs Flower's SecAgg+.

Every configuration runs all clients in one process; per-client time is the total client
time divided by the number of clients, bytes up are the mean over clients that finished. Dropouts happen after the key sharing round (the
costliest case for the server: it must rebuild the dropped clients' mask keys and
regenerate their pairwise masks). Flower's `SecAggPlusWorkflow` and `secaggplus_mod` run
unmodified over an in-process grid that serializes every message with Flower's protobuf
serde, with the same clients, neighbourhood size, threshold and dropped set.

    .venv/bin/python benchmarks/secagg_bench.py                  # 10/100/500 clients, 100k
    .venv/bin/python benchmarks/secagg_bench.py --clients 10 100 --flower-max-clients 100
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import time

import numpy as np

from fedmeta.privacy.secagg.graph import COMPLETE, SECAGG_PLUS, degree_for, min_threshold
from fedmeta.privacy.secagg.protocol import Phase
from fedmeta.privacy.secagg.shamir import reconstruct, split


def plaintext(inputs: list[np.ndarray], survivors: list[int]) -> tuple[np.ndarray, float]:
    """The reference sum and the best of three timings of it."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        total = np.zeros(inputs[0].shape, dtype=np.float64)
        for i in survivors:
            total += inputs[i]
        best = min(best, time.perf_counter() - start)
    return total, best


def ours(inputs, dropped, neighbourhood, degree, threshold):
    from fedmeta.privacy.secagg.simulate import secure_sum

    total, stats = secure_sum(
        inputs,
        threshold,
        {Phase.MASKED_INPUT: dropped},
        neighbourhood=neighbourhood,
        degree=degree,
        rng=random.Random(0),
    )
    return total, {
        "client_s": stats.client_seconds_per_client(),
        "server_s": stats.server.total_seconds,
        "client_up": np.mean([stats.clients[i].total_bytes_sent for i in stats.included]),
    }


class _FlowerGrid:
    """Routes Flower messages to `secaggplus_mod` in this process, through protobuf bytes."""

    def __init__(self, inputs: dict[int, np.ndarray], dropped: set[int]):
        from flwr.app import Context, RecordDict

        self.inputs, self.dropped = inputs, dropped
        self.contexts = {nid: Context(0, nid, {}, RecordDict(), {}) for nid in inputs}
        self.client_s = 0.0
        self.client_up = dict.fromkeys(inputs, 0)

    def _fit(self, msg, ctxt):
        from flwr.app import Message
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
        from flwr.compat.common import recorddict_compat as compat

        params = ndarrays_to_parameters([self.inputs[ctxt.node_id]])
        res = FitRes(Status(Code.OK, ""), params, 1, {})
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)

    @staticmethod
    def _wire(msg) -> bytes:
        from flwr.common.serde import message_to_proto

        return message_to_proto(msg).SerializeToString()

    @staticmethod
    def _unwire(data: bytes):
        from flwr.common.serde import message_from_proto
        from flwr.proto.message_pb2 import Message as ProtoMessage

        proto = ProtoMessage()
        proto.ParseFromString(data)
        return message_from_proto(proto)

    def send_and_receive(self, messages, timeout=None):
        from flwr.client.mod.secure_aggregation.secaggplus_mod import secaggplus_mod
        from flwr.common.secure_aggregation.secaggplus_constants import (
            RECORD_KEY_CONFIGS,
            Key,
            Stage,
        )

        replies = []
        for msg in messages:
            nid = msg.metadata.dst_node_id
            stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
            if nid in self.dropped and stage in (Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK):
                continue
            down = self._wire(msg)
            start = time.perf_counter()
            up = self._wire(secaggplus_mod(self._unwire(down), self.contexts[nid], self._fit))
            self.client_s += time.perf_counter() - start
            self.client_up[nid] += len(up)
            replies.append(self._unwire(up))
        return replies


def flower(inputs, dropped, num_shares, threshold):
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server import ServerConfig
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
    from flwr.server.workflow.secure_aggregation.secaggplus_workflow import SecAggPlusWorkflow
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 0, 1, 0
    n = len(inputs)
    by_node = {i + 1: x for i, x in enumerate(inputs)}  # Flower node ids start at 1
    grid = _FlowerGrid(by_node, {i + 1 for i in dropped})
    manager = SimpleClientManager()
    for nid in by_node:
        manager.register(GridClientProxy(nid, grid, 0))
    strategy = FedAvg(fraction_fit=1.0, min_fit_clients=n, min_available_clients=n)
    context = LegacyContext(
        Context(0, 1, {}, RecordDict(), {}), ServerConfig(num_rounds=1), strategy, manager
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: 1})
    zeros = ndarrays_to_parameters([np.zeros_like(inputs[0])])
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(zeros, True)
    workflow = SecAggPlusWorkflow(num_shares=num_shares, reconstruction_threshold=threshold)
    start = time.perf_counter()
    workflow(grid, context)
    total_s = time.perf_counter() - start
    record = context.state.array_records[MAIN_PARAMS_RECORD]
    mean = parameters_to_ndarrays(compat.arrayrecord_to_parameters(record, keep_input=True))[0]
    return mean * (n - len(dropped)), {  # FedAvg with equal weights: back to a sum
        "client_s": grid.client_s / n,
        "server_s": total_s - grid.client_s,
        "client_up": np.mean([grid.client_up[nid] for nid in by_node if nid not in grid.dropped]),
    }


def shamir_table(n: int = 100, t: int = 51, reps: int = 5) -> None:
    from Crypto.Protocol.SecretSharing import Shamir

    secret = os.urandom(32)
    start = time.perf_counter()
    for _ in range(reps):
        shares = split(secret, n, t)
        assert reconstruct(shares[:t], t) == secret
    mine = (time.perf_counter() - start) / reps
    start = time.perf_counter()
    for _ in range(reps):  # two 16-byte blocks, as Flower shares a 32-byte key
        for block in (secret[:16], secret[16:]):
            pieces = Shamir.split(t, n, block, ssss=False)
            assert Shamir.combine(pieces[:t], ssss=False) == block
    theirs = (time.perf_counter() - start) / reps
    print(f"\nShamir split+reconstruct of a 32-byte secret, n={n}, t={t}:")
    print(f"  fedmeta GF(2^255-19): {mine * 1e3:8.1f} ms")
    print(f"  pycryptodome GF(2^128) (used by Flower): {theirs * 1e3:8.1f} ms")
    print(f"  ratio pycryptodome / fedmeta: {theirs / mine:6.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--dim", type=int, default=100_000)
    parser.add_argument("--dropouts", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--complete-max-clients", type=int, default=100)
    parser.add_argument("--flower-max-clients", type=int, default=100)
    args = parser.parse_args()
    import flwr.supercore.logger  # noqa: F401 -- sets its level on import; quiet it after

    logging.getLogger("flwr").setLevel(logging.ERROR)

    header = (
        f"{'n':>4} {'drop':>4} {'graph (k,t)':>17} | {'plain srv s':>11} | "
        f"{'ours cli s':>10} {'ours srv s':>10} {'srv/plain':>9} {'up KB':>7} {'up/plain':>8} "
        f"{'max err':>8} | {'flwr cli s':>10} {'flwr srv s':>10} {'up KB':>7} "
        f"{'cli x':>6} {'srv x':>6}"
    )
    print(f"dim = {args.dim}, ring Z_2^32, dropouts after key sharing; 'x' = Flower / ours")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for n in args.clients:
        inputs = [rng.uniform(-1, 1, args.dim).astype(np.float32) for _ in range(n)]
        for rate in args.dropouts:
            dropped = set(random.Random(n).sample(range(n), round(rate * n)))
            survivors = [i for i in range(n) if i not in dropped]
            if n <= args.complete_max_clients:
                kind, degree = COMPLETE, n - 1
            else:
                kind, degree = SECAGG_PLUS, degree_for(n, max(rate, 0.1), failure=1e-3)
            threshold = min_threshold(degree)
            reference, plain_s = plaintext(inputs, survivors)
            total, mine = ours(inputs, dropped, kind, degree, threshold)
            err = float(np.abs(total - reference).max())
            plain_up = args.dim * 4  # float32 update
            row = (
                f"{n:>4} {rate:>4.0%} {kind + f' ({degree},{threshold})':>17} | {plain_s:>11.4f} | "
                f"{mine['client_s']:>10.4f} {mine['server_s']:>10.3f} "
                f"{mine['server_s'] / plain_s:>9.0f} {mine['client_up'] / 1e3:>7.0f} "
                f"{mine['client_up'] / plain_up:>8.2f} {err:>8.1e} |"
            )
            if n <= args.flower_max_clients:
                fl_total, fl = flower(inputs, dropped, degree + 1, threshold)
                assert np.abs(fl_total - reference).max() < 1e-2 * n, "Flower's sum is off"
                row += (
                    f" {fl['client_s']:>10.4f} {fl['server_s']:>10.3f} "
                    f"{fl['client_up'] / 1e3:>7.0f} {fl['client_s'] / mine['client_s']:>6.1f} "
                    f"{fl['server_s'] / mine['server_s']:>6.1f}"
                )
            print(row, flush=True)
    shamir_table()


if __name__ == "__main__":
    main()
