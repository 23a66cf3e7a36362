"""A round's clients are encoded, decoded and averaged together (stacked along a clients
axis) where every step allows it; each batched path gives exactly what the per-client path
gives: the same bytes, the same verdicts and the same bits of the mean."""

import torch

from fedmeta.federated.client_steps import Compress, Context, Pipeline, Sign, Upload
from fedmeta.federated.compression import NoCompression, TopK
from fedmeta.federated.validation import check_update, check_updates
from fedmeta.federated.wire import encode, encode_rows, raw
from fedmeta.params import PerClient, Stacked, weighted_mean, weighted_sum

REFERENCE = {"w": torch.zeros(3, 4), "b": torch.zeros(4), "s": torch.zeros(1, 1)}


def stacked(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(n, *v.shape, generator=g, dtype=dtype) for k, v in REFERENCE.items()}


def test_encode_rows_is_each_rows_encoding():
    for dtype in (torch.float32, torch.float64):
        rows = stacked(5, dtype=dtype)
        expected = [encode({k: raw(v[i]) for k, v in rows.items()}) for i in range(5)]
        assert encode_rows(rows) == expected


def test_check_updates_gives_each_updates_verdict_in_order():
    rows = stacked(6)
    data = dict(zip([10, 3, 7, 1, 8, 2], encode_rows(rows), strict=True))
    bad = {k: v.clone() for k, v in rows.items()}
    bad["b"][2, 1], bad["w"][4, 0, 0] = float("nan"), float("inf")
    data = dict(zip(data, encode_rows(bad), strict=True))
    updates, errors = check_updates(data, REFERENCE)
    assert list(errors) == [7, 8] and list(updates) == [10, 3, 1, 2]
    assert isinstance(updates.blocks[0][1], Stacked)
    assert errors[7].reason == "b: non-finite values (NaN or Inf)"
    assert errors[8].reason == "w: non-finite values (NaN or Inf)"
    for c in updates:
        one = check_update(str(c), data[c], REFERENCE)
        assert one.keys() == updates[c].keys()
        assert all(torch.equal(one[k], updates[c][k]) for k in one)


def test_check_updates_decodes_each_when_headers_differ():
    rows = stacked(3)
    mixed = encode_rows(rows)
    topk = TopK(0.5)
    one = {k: v[1] for k, v in rows.items()}
    mixed[1] = encode(topk.encode(one, topk.init(one), torch.Generator())[0])
    mixed.append(b"FMU1junk")
    updates, errors = check_updates(dict(enumerate(mixed)), REFERENCE)
    assert list(updates) == [0, 1, 2] and list(errors) == [3]
    assert errors[3].reason.startswith("malformed")
    for c in range(3):
        expected = check_update(str(c), mixed[c], REFERENCE)
        assert all(torch.equal(expected[k], updates[c][k]) for k in expected)


def test_weighted_mean_of_stacked_updates_is_bit_identical():
    data = dict(enumerate(encode_rows(stacked(50, seed=1))))
    updates, _ = check_updates(data, REFERENCE)
    rows = updates.rows(list(range(50)))
    assert isinstance(rows, Stacked)
    weights = torch.rand(50, generator=torch.Generator().manual_seed(2)).tolist()
    listed = [check_update(str(c), d, REFERENCE) for c, d in data.items()]
    for ours, theirs in ((weighted_mean(rows, weights), weighted_mean(listed, weights)),
                         (weighted_sum(rows), weighted_sum(listed))):
        assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in theirs)


def test_per_client_rows_keep_the_clients_order():
    values = PerClient()
    values.add([4, 2], Stacked(stacked(2)))
    values.add([9], [{"x": torch.ones(1)}])
    assert list(values) == [4, 2, 9] and len(values) == 3
    rows = values.rows([9, 4])
    assert len(rows) == 2 and torch.equal(rows[0]["x"], torch.ones(1))
    assert torch.equal(rows[1]["w"], values.blocks[0][1].tensors["w"][0])


def test_pipeline_batch_matches_each_clients_pipeline():
    pipeline = Pipeline({"compress": Compress(NoCompression()), "sign": Sign(lambda c: None)})
    rows = Stacked(stacked(4))
    ctx = Context(REFERENCE, 1, 0, torch.Generator(), lambda c: None)
    batch_states: dict = {2: {"compress": None}}
    uploads = pipeline.batch([1, 2, 3, 5], rows, batch_states, ctx)
    states: dict = {2: {"compress": None}}
    for c, i in zip([1, 2, 3, 5], range(4), strict=True):
        upload, states[c] = pipeline(Upload(c, rows[i]), states.get(c), ctx)
        assert upload.data == uploads[i].data and upload.client == uploads[i].client
    assert states == batch_states
    assert Pipeline({"compress": Compress(TopK(0.5))}).batch([1, 2, 3, 5], rows, {}, ctx) is None
