"""Drive a federated run to the end: rounds over the runtime, evaluation, checkpoints,
metrics, the ledger and the summary.

Each step (the round-0 evaluation, every round, the end) is committed to the checkpoint
with what it publishes, then published (`fedmeta.rundir`): metrics rows, the ledger's
entries, and at the end `model.pt`, `personalization.json` and `summary.json`. A resumed
run publishes its last committed step again, then goes on.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import uuid
from typing import Any

from fedmeta.config import Config
from fedmeta.federated.membership import membership_audit
from fedmeta.federated.record import RunRecord
from fedmeta.federated.runtime import Runtime
from fedmeta.progress import progress_bar
from fedmeta.rundir import RunDir, file_sha256
from fedmeta.threads import use_threads
from fedmeta.tracking import TensorBoardSink

log = logging.getLogger("fedmeta.federated")


def run_federated(cfg: Config, run: RunDir, *, resume: bool = False, show_progress: bool = True,
                  runtime: Runtime | None = None) -> dict:
    """Drive a federated run to the end and return its summary. `runtime` defaults to
    in-process clients; a deployment passes one over the Flower transport."""
    driver = Driver(cfg, run, Runtime(cfg) if runtime is None else runtime, resume)
    try:
        return driver.run(show_progress)
    finally:
        if driver.sink is not None:
            driver.sink.close()


class Driver:
    def __init__(self, cfg: Config, run: RunDir, runtime: Runtime, resume: bool):
        self.cfg, self.run_dir, self.runtime = cfg, run, runtime
        use_threads(cfg, runtime.clients.training.batching)
        self.record = RunRecord(cfg, run.path) if cfg.ledger.enabled else None
        self.sink = TensorBoardSink(run.path) if cfg.run.tensorboard else None
        self.committed = run.load_checkpoint() if resume else None
        if self.committed is None:
            self.progress: dict[str, Any] = {"run_id": uuid.uuid4().hex, "elapsed": 0.0, "evaluated": None,
                                             "last": {}, "per_client": {}, "stopped": None}
        else:
            runtime.load_state_dict(self.committed["state"]["simulation"])
            self.progress = self.committed["state"]["progress"]
        self.t0 = time.perf_counter() - self.progress["elapsed"]
        if hasattr(runtime.transport, "run_key"):  # deployed clients keep their state under the run's id
            runtime.transport.run_key = self.progress["run_id"]

    def publish(self, step: dict[str, Any]) -> dict[str, Any] | None:
        """Publish a committed step (again, after a kill: every publication is idempotent)."""
        run_id, params, record, run = self.progress["run_id"], self.runtime.params, self.record, self.run_dir
        if record is not None and "start" in step:
            record.start(run_id, params, self.runtime.start_record())
        if record is not None and "round" in step:
            record.round(run_id, params, step["round"])
        if "final" not in step:
            return None
        run.save_model(params)
        run.write_json("personalization.json", step["final"]["per_client"])
        summary = dict(step["final"]["summary"])
        if record is not None:
            files = {n: file_sha256(run.path / n) for n in ("model.pt", "personalization.json")}
            summary["ledger"] = record.end(run_id, params, {k: summary[k] for k in ("rounds", "final")}, files)
        run.write_json("summary.json", summary)
        return summary

    def commit(self, step: dict[str, Any]) -> dict[str, Any] | None:
        self.progress["elapsed"] = time.perf_counter() - self.t0
        self.run_dir.commit({"simulation": self.runtime.state_dict(), "progress": self.progress}, step)
        if self.sink is not None:
            self.sink.write(step["rows"])
        return self.publish(step)

    def evaluate(self, extra: dict[str, Any]) -> list[dict[str, Any]]:
        """Metrics rows of the current model: held-out clients, then training clients."""
        runtime, progress = self.runtime, self.progress
        progress["evaluated"] = runtime.round
        rows = []
        for split in ("test", "train") if runtime.data.held_out else ("train",):
            row = runtime.personalization(split)
            clients = row.pop("per_client")
            rows.append({"round": runtime.round, **row, **runtime.server.privacy_spent(), **extra})
            if split == "test" or not runtime.data.held_out:
                progress["last"], progress["per_client"] = row, clients
        return rows

    def run(self, show_progress: bool) -> dict[str, Any]:
        cfg, runtime, progress, fed = self.cfg, self.runtime, self.progress, self.cfg.federated
        if self.committed is not None and (done := self.publish(self.committed["publish"])) is not None:
            return done
        if self.record is not None and runtime.transport.signs and cfg.ledger.participants:
            runtime.enable_signing(progress["run_id"])
        affordable = runtime.server.affordable_rounds
        if affordable is not None and affordable < fed.rounds:
            print(f"privacy budget: target ε = {cfg.privacy.target_epsilon} at δ = {cfg.privacy.delta} allows "
                  f"{affordable} of federated.rounds = {fed.rounds}; the run will stop there", file=sys.stderr)
        with progress_bar(fed.rounds, runtime.round, "federated rounds", show_progress) as advance:
            if self.committed is None:
                self.commit({"rows": self.evaluate({"bytes_up": 0, "bytes_down": 0}), "start": True})
            while runtime.round < fed.rounds:
                if progress.update(stopped=runtime.server.budget_exhausted()) or progress["stopped"]:
                    log.warning(progress["stopped"])
                    print(f"stopping early: {progress['stopped']}", file=sys.stderr)
                    break
                result = runtime.run_round()
                scheduled = runtime.round % fed.eval_every == 0 or runtime.round == fed.rounds
                rows = self.evaluate(result.row) if scheduled else [{**result.row, "split": "round"}]
                self.commit({"rows": rows, "round": result.entry})
                advance(**{k: progress["last"][k] for k in ("loss_after", "acc_after") if k in progress["last"]})
        # the loop ended off-schedule (budget stop): the final model is evaluated once more
        rows = self.evaluate({}) if progress["evaluated"] != runtime.round else []
        final = {"summary": self.summary(rows), "per_client": progress["per_client"]}
        return self.commit({"rows": rows, "final": final})

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        cfg, runtime, fed = self.cfg, self.runtime, self.cfg.federated
        remote = getattr(runtime.data, "remote", False)  # the rows stay with their owners
        audit = membership_audit(runtime.learner, runtime.params, runtime.data) if cfg.privacy.audit and not remote else None
        summary = {
            "mode": "federated",
            "procedure": fed.clients.procedure,
            "algorithm": cfg.meta.algorithm if fed.clients.procedure == "fedmeta" else fed.clients.procedure,
            "strategy": runtime.provenance.get("strategy", fed.server.strategy),
            "rounds": runtime.round,
            "stopped": self.progress["stopped"],
            **runtime.server.privacy_spent(),
            "seconds": round(time.perf_counter() - self.t0, 2),
            "final": {k: v for k, v in self.progress["last"].items() if k not in ("round", "split")},
        }
        diverged = [k for k, v in summary["final"].items() if isinstance(v, float) and not math.isfinite(v)]
        if diverged:  # JSON (and so the ledger) holds finite numbers only: said, not written as NaN
            summary["final"] = {k: None if k in diverged else v for k, v in summary["final"].items()}
            summary["non_finite"] = diverged
        if cfg.privacy.dp != "off" or cfg.privacy.secure_aggregation != "off":
            summary["privacy"] = cfg.privacy.model_dump(include={"dp", "clipping", "secure_aggregation"})
        if audit is not None:
            summary["membership_audit"] = audit
        elif cfg.privacy.audit and remote:
            summary["membership_audit_skipped"] = "the audit reads the members' rows, which stay with their owners"
        per_round = {r["round"]: r for r in self.run_dir.metrics() + rows if "bytes_up" in r}  # one row per round counts
        for key in ("bytes_up", "bytes_down"):
            summary[f"{key}_total"] = sum(r[key] for r in per_round.values())
        return summary
