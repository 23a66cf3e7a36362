import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmeta.config import Config, sectioned
from fedmeta.deploy import ckks
from fedmeta.deploy.clientapp import ClientHandlers
from fedmeta.deploy.messages import EVALUATE, QUERY, TRAIN
from fedmeta.deploy.secagg import MASKED_INPUT, SHARE_KEYS, UNMASK
from fedmeta.deploy.transport import FlowerTransport
from fedmeta.federated.runtime import Runtime
from fedmeta.federated.transport import Replies
from fedmeta.ledger import keys


def make_config(data: str = "synthetic", privacy: dict | None = None, **federated) -> Config:
    """A small federated config; keyword arguments override [federated] keys, given by their
    flat names (local_lr, aggregator, ...: `fedmeta.config.DEPRECATED`) or as section tables."""
    fed = dict(rounds=2, n_clients=3, held_out_clients=2, clients_per_round=2, local_steps=2,
               tasks_per_step=2, local_lr=0.05, eval_every=1)
    fed.update(federated)
    raw = {
        "run": {"seed": 3},
        "data": {"name": data, "k_shot": 5, "k_query": 5},
        "model": {"name": "mlp", "hidden": [16, 16]},
        "meta": {"algorithm": "fomaml", "inner_steps": 1, "inner_lr": 0.05, "eval_inner_steps": 2},
        "federated": sectioned(fed),
        "privacy": privacy or {},
    }
    return Config.model_validate(raw)


class LoopbackGrid:
    """A Grid that hands each message to the ClientApp handlers in this process, as a
    supernode with `partition-id = i` would; a handler's exception becomes an error reply."""

    def __init__(self, n: int, node_config: dict | None = None, silent: dict[str, set[int]] | None = None,
                 client: ClientHandlers | None = None, nodes: list[dict] | None = None):
        """`silent[kind]`: partition ids that never answer messages of that kind (dropouts);
        `client`: the ClientApp's handlers (default: the stock `client_app`'s); `nodes`: each
        supernode's own node_config (default: `partition-id = i` of `n`, plus `node_config`)."""
        self.silent, self.client = silent or {}, client or ClientHandlers()
        if nodes is None:
            nodes = [{"partition-id": i, "num-partitions": n, **(node_config or {})} for i in range(n)]
        self.contexts = {
            100 + i: Context(run_id=1, node_id=100 + i, state=RecordDict(), run_config={}, node_config=mine)
            for i, mine in enumerate(nodes)
        }
        self.sent: list[Message] = []
        self.replies: list[Message] = []
        self.pending: list[Message] = []  # replies pushed and not yet pulled (`push_messages`)

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        c = self.client
        handlers = {TRAIN: c.train, QUERY: c.query, EVALUATE: c.evaluate,
                    **dict.fromkeys((SHARE_KEYS, MASKED_INPUT, UNMASK), c.secagg),
                    **dict.fromkeys((ckks.ENCRYPT, ckks.DECRYPT), c.ckks), ckks.DEAL: c.deal}
        out = []
        for m in messages:
            self.sent.append(m)
            if m.metadata.dst_node_id - 100 in self.silent.get(m.metadata.message_type, ()):
                continue
            try:
                out.append(handlers[m.metadata.message_type](m, self.contexts[m.metadata.dst_node_id]))
            except Exception as err:
                out.append(Message(error=Error(code=1, reason=f"{type(err).__name__}: {err}"), reply_to=m))
        self.replies.extend(out)
        return out

    def push_messages(self, messages):
        """Flower's push (what `PromptGrid` uses): each message gets its id as Flower's grid
        gives it, and its reply waits to be pulled."""
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
        self.pending += self.send_and_receive(messages)
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids):
        ids = set(message_ids)
        out = [r for r in self.pending if r.metadata.reply_to_message_id in ids]
        self.pending = [r for r in self.pending if r not in out]
        return out


@pytest.fixture
def config():
    return make_config


@pytest.fixture
def grid_factory(monkeypatch):
    """Server-side messages need the task identity the ServerApp process would have."""
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)
    return LoopbackGrid


@pytest.fixture
def deployed(grid_factory):
    """`make(cfg, grid, min_nodes=..., wait=..., deadline=...)`: the server's runtime of a
    deployed run, its transport Flower over `grid` (registration happens here)."""

    def make(cfg: Config, grid, **options) -> Runtime:
        return Runtime(cfg, lambda _: FlowerTransport(cfg, grid, **options))

    return make


@pytest.fixture
def exchange():
    """`send(runtime, round, attempt=0)`: the round's sample and broadcast over the runtime's
    transport, as a round sends them, and the replies; nothing is admitted or aggregated."""

    def send(runtime: Runtime, round_: int, attempt: int = 0) -> Replies:
        return runtime.exchange(round_, attempt)

    return send


@pytest.fixture
def client_keys():
    """`make(folder, n)`: keys `<folder>/<cid>.pem` for clients 0..n-1, and their public keys
    as `ledger.participants` registers them."""

    def make(folder, n: int) -> dict[str, str]:
        registered = {}
        for cid in range(n):
            key = keys.generate()
            keys.save_private_key(key, folder / f"{cid}.pem")
            registered[str(cid)] = keys.public_key_hex(key)
        return registered

    return make


@pytest.fixture
def plaintext_updates():
    """`recompute(grid, round_=1)`: each sampled client's update, weight and report of that
    round, recomputed in the clear from the train messages the server sent."""
    from fedmeta.deploy.clientapp import client_update
    from fedmeta.deploy.messages import HEADER, read_params, read_reply
    from fedmeta.federated.wire import decode

    def recompute(grid, round_=1):
        """Each sampled client's update, weight and report, recomputed in the clear from the
        train messages the server sent (the same inputs; no secure aggregation)."""
        out = {}
        for m in grid.sent:
            if m.metadata.message_type != TRAIN or int(m.content[HEADER]["round"]) != round_:
                continue
            header = dict(m.content[HEADER])
            node_config = grid.contexts[m.metadata.dst_node_id].node_config
            reply = client_update(header, read_params(m.content), dict(node_config), RecordDict())
            cid, got = read_reply(reply)
            out[cid] = (decode(got.data), got.weight, got.report)
        return out

    return recompute
