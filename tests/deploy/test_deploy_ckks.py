"""CKKS sums over Flower messages, handlers called directly: a client deals the keys
through the server, the deployed encrypted aggregate equals the plaintext weighted mean and
the in-process CKKS aggregate of the same updates, a seeded run equals the in-process CKKS
run, dropouts and malformed ciphertexts leave the others' sum, the server never holds a
key, and with registered client keys a swapped key or a server's own deal is refused."""

import numpy as np
import pytest
import tenseal as ts
import torch
from flwr.app import Context, RecordDict

from fedmeta.deploy import ckks
from fedmeta.deploy.clientapp import ClientHandlers
from fedmeta.deploy.messages import TRAIN
from fedmeta.federated.aggregation import build_aggregation
from fedmeta.federated.driver import run_federated
from fedmeta.privacy.he import CKKSKeys
from fedmeta.rundir import RunDir

pytestmark = pytest.mark.filterwarnings("ignore::fedmeta.privacy.noise.InsecureNoiseWarning")


def ckks_config(config, privacy=None, data="sinusoid", **federated):
    fed = dict(n_clients=4, clients_per_round=4, min_clients=2, strategy="fedavg", server_lr=1.0)
    return config(data, privacy={"secure_aggregation": "ckks", **(privacy or {})}, **{**fed, **federated})


def kinds(grid) -> list[str]:
    return [m.metadata.message_type for m in grid.sent if m.metadata.message_type != "query"]


def assert_delta(runtime, before, expected, atol=1e-6):
    for name, value in runtime.params.items():
        torch.testing.assert_close(value.double() - before[name].double(), expected[name].double(), rtol=0, atol=atol)


@pytest.mark.parametrize(("silent", "included"), [({}, {0, 1, 2, 3}), ({ckks.ENCRYPT: {1}}, {0, 2, 3}),
                                                  ({TRAIN: {2}}, {0, 1, 3}), ({ckks.DECRYPT: {0}}, {0, 1, 2, 3})])
def test_encrypted_aggregate_is_the_weighted_mean(config, grid_factory, deployed, plaintext_updates, silent, included):
    """A client silent before encrypting is left out of the sum; the decryptor silent: the
    next client of the sum decrypts it."""
    cfg = ckks_config(config)
    grid = grid_factory(4, silent=silent)
    runtime = deployed(cfg, grid, min_nodes=4, wait=1)
    before = {k: v.clone() for k, v in runtime.params.items()}
    row = runtime.run_round().row
    assert row["clients"] == len(included) and row["he_included"] == len(included)
    sent = kinds(grid)
    decrypts = 2 if ckks.DECRYPT in silent else 1
    assert [sent.count(k) for k in (ckks.DEAL, TRAIN, ckks.ENCRYPT, ckks.DECRYPT)] == [1, 4, 4 - (TRAIN in silent),
                                                                                     decrypts]
    clear = {c: v for c, v in plaintext_updates(grid).items() if c in included}
    total = sum(w for _, w, _ in clear.values())
    mean = {k: sum(u[k].double() * w for u, w, _ in clear.values()) / total for k in runtime.params}
    assert_delta(runtime, before, mean)
    ids = sorted(clear)  # the in-process CKKS sum of the same updates
    local = build_aggregation(cfg, None)([clear[c][0] for c in ids], [clear[c][1] for c in ids], [0.0] * len(ids),
                                         np.random.default_rng(0)).delta
    assert_delta(runtime, before, local)


def test_keys_are_dealt_once_and_installed_once(config, grid_factory, deployed):
    cfg = ckks_config(config)
    grid = grid_factory(4)
    runtime = deployed(cfg, grid, min_nodes=4, wait=1)
    first, second = runtime.run_round().row, runtime.run_round().row
    assert kinds(grid).count(ckks.DEAL) == 1
    installs = [m.metadata.group_id for m in grid.sent if ckks.INSTALL in m.content]
    assert sorted(installs) == ["1.0"] * 4  # each client's first train message carries its key
    assert first["he_key_bytes_down"] > 0 == second["he_key_bytes_down"]
    assert len(first["he_exchange_seconds"]) == 3 and first["he_bytes_up"] > 0


def test_a_seeded_deployed_run_equals_the_in_process_ckks_run(config, grid_factory, deployed, tmp_path):
    """Client-level DP (adaptive clipping, seeded noise) over CKKS, three rounds of sampled
    clients: the parameters agree to CKKS precision, ε exactly."""
    privacy = {"dp": "central", "noise_multiplier": 0.3, "clip_norm": 0.1, "clipping": "adaptive", "noise_seed": 5}
    cfg = ckks_config(config, privacy, "synthetic", rounds=3, n_clients=5, clients_per_round=4, min_clients=2)
    local = run_federated(cfg, RunDir.create(tmp_path / "local", cfg), show_progress=False)
    run = RunDir.create(tmp_path / "flower", cfg)
    remote = run_federated(cfg, run, show_progress=False, runtime=deployed(cfg, grid_factory(5), min_nodes=5, wait=1))
    a = torch.load(tmp_path / "local" / "model.pt", weights_only=True)
    b = torch.load(run.path / "model.pt", weights_only=True)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a)
    assert remote["epsilon"] == local["epsilon"] > 0 and remote["privacy"] == local["privacy"]


def test_the_server_never_holds_a_key(config, grid_factory, deployed):
    """The deal the server keeps opens nothing: its context has no secret key, and neither
    the secret context nor the key that seals it appears in any message the server received."""
    grid = grid_factory(3)
    runtime = deployed(ckks_config(config, n_clients=3, clients_per_round=3), grid, min_nodes=3, wait=1)
    runtime.run_round()
    deal = runtime.transport.deal
    assert not ts.context_from(deal.server_context).is_private()
    secret = bytes(grid.contexts[101].state[ckks.KEY]["secret"])
    CKKSKeys.from_secret_context(secret)  # what the node holds can decrypt
    values = [bytes(v) for r in grid.replies for rec in r.content.config_records.values() for v in rec.values()
              if isinstance(v, bytes)]
    received = b"".join(values)
    pieces = [secret[i : i + 64] for i in range(0, len(secret) - 64, len(secret) // 16)]
    pieces = [p for p in pieces if p not in deal.server_context]  # the ring parameters are public
    assert len(pieces) >= 8
    for piece in [*pieces, bytes(grid.contexts[101].state[ckks.KX]["private"])]:
        assert piece not in received
    for value in values:  # nothing the server received loads as a context with a secret key
        try:
            assert not ts.context_from(value).is_private()
        except (ValueError, RuntimeError, TypeError):
            pass


def test_a_restarted_supernode_gets_newly_dealt_keys(config, grid_factory, deployed):
    """Its X25519 key is gone with its context: the keys are dealt again, to everyone."""
    grid = grid_factory(3)
    runtime = deployed(ckks_config(config, n_clients=3, clients_per_round=3), grid, min_nodes=3, wait=1)
    runtime.run_round()
    first = runtime.transport.deal.key_id
    mine = grid.contexts.pop(101).node_config
    grid.contexts[201] = Context(run_id=1, node_id=201, state=RecordDict(), run_config={}, node_config=mine)
    assert runtime.run_round().row["he_included"] == 3
    assert runtime.transport.deal.key_id != first and kinds(grid).count(ckks.DEAL) == 2
    assert bytes(grid.contexts[201].state[ckks.KEY]["key_id"]) == runtime.transport.deal.key_id


class Malformed(ClientHandlers):
    """Client 2 answers the encrypt step with bytes that are not a ciphertext."""

    def ckks(self, msg, context):
        reply = super().ckks(msg, context)
        if msg.metadata.message_type == ckks.ENCRYPT and context.node_config["partition-id"] == 2:
            reply.content["update"]["data"] = ckks.pack([b"\x00" * 64])
        return reply


def test_a_malformed_ciphertext_is_dropped_from_the_sum(config, grid_factory, deployed, plaintext_updates):
    cfg = ckks_config(config)
    grid = grid_factory(4, client=Malformed())
    runtime = deployed(cfg, grid, min_nodes=4, wait=1)
    before = {k: v.clone() for k, v in runtime.params.items()}
    result = runtime.run_round()
    assert result.row["he_included"] == 3
    clear = {c: v for c, v in plaintext_updates(grid).items() if c != 2}
    total = sum(w for _, w, _ in clear.values())
    assert_delta(runtime, before, {k: sum(u[k].double() * w for u, w, _ in clear.values()) / total
                                   for k in runtime.params})


def signed_config(config, client_keys, tmp_path, n=3):
    registered = client_keys(tmp_path, n)
    cfg = ckks_config(config, n_clients=n, clients_per_round=n)
    return cfg.model_copy(update={"ledger": cfg.ledger.model_copy(update={
        "enabled": True, "participants": registered, "client_keys": str(tmp_path)})})


def test_with_registered_keys_a_swapped_key_gets_no_wrap(config, grid_factory, deployed, client_keys, tmp_path):
    """The server replaces client 1's key-exchange key with one of its own: the dealer finds
    no valid signature and deals client 1 no key; the other two still sum."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    cfg = signed_config(config, client_keys, tmp_path)
    grid = grid_factory(3)
    runtime = deployed(cfg, grid, min_nodes=3, wait=1)
    transport = runtime.transport
    transport.adverts[1] = (X25519PrivateKey.generate().public_key().public_bytes_raw(), transport.adverts[1][1])
    replies = runtime.exchange(1)
    assert 1 not in transport.deal.wraps and "signature" in transport.deal.refused[1]
    assert replies.dropped[1].startswith("no CKKS key") and replies.summed.included == {0, 2}


def test_with_registered_keys_a_deal_the_server_made_is_refused(config, grid_factory, deployed, client_keys,
                                                                tmp_path):
    """The server deals keys of its own to the clients' public keys (it could decrypt them):
    no client holds the dealer's signing key, so every client refuses to install, and the
    round has no sum."""
    cfg = signed_config(config, client_keys, tmp_path)
    grid = grid_factory(3)
    runtime = deployed(cfg, grid, min_nodes=3, wait=1)
    transport = runtime.transport
    forged = ckks.Deal.read(ckks.deal(cfg.model_copy(update={"ledger": cfg.ledger.model_copy(update={
        "participants": {}})}), 0, transport.adverts, None))
    transport.deal = forged
    replies = runtime.exchange(1)
    assert replies.summed.total is None
    assert all("the CKKS deal of client 0" in replies.dropped[c] for c in range(3))
