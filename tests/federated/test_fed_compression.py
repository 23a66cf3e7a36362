"""Wire format and compression: exact byte counts, top-k error feedback, unbiased 8-bit codes."""

import torch

from fedmeta.federated.compression import NoCompression, StochasticInt8, TopK
from fedmeta.federated.wire import decode, encode, raw


def update(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(20, 30, generator=g), "b": torch.randn(30, generator=g)}


def test_raw_round_trip_and_size():
    u = update()
    data = encode(NoCompression().encode(u, None, torch.Generator())[0])
    out = decode(data)
    assert all(torch.equal(out[k], u[k]) for k in u)
    assert len(data) > 4 * 630 and len(data) < 4 * 630 + 300  # values plus a small header


def test_topk_sends_k_values_and_keeps_the_rest_as_error_feedback():
    u, codec = update(), TopK(0.1)
    state = codec.init(u)
    payload, residual = codec.encode(u, state, torch.Generator())
    sent = decode(encode(payload))
    assert sum(int((sent[k] != 0).sum()) for k in sent) == 63
    for k in u:  # sent + kept = update + previous residual (zero here), exactly
        torch.testing.assert_close(sent[k] + residual[k], u[k], rtol=0, atol=0)
    threshold = min(float(sent[k][sent[k] != 0].abs().min()) for k in sent)
    assert all(float(residual[k].abs().max()) <= threshold for k in u)
    payload2, residual2 = codec.encode(u, residual, torch.Generator())
    sent2 = decode(encode(payload2))
    for k in u:  # second round carries the first round's leftovers
        torch.testing.assert_close(sent2[k] + residual2[k], u[k] + residual[k])
    assert len(encode(payload)) < 0.25 * len(encode({k: raw(v) for k, v in u.items()}))


def test_int8_is_unbiased_and_four_times_smaller():
    u, codec = update(), StochasticInt8()
    gen = torch.Generator().manual_seed(0)
    draws = [decode(encode(codec.encode(u, None, gen)[0])) for _ in range(400)]
    for k in u:
        mean = torch.stack([d[k] for d in draws]).mean(0)
        step = float(u[k].max() - u[k].min()) / 255
        assert float((mean - u[k]).abs().max()) < 0.25 * step  # ≈ step/(2·√400)·4σ
        assert float((draws[0][k] - u[k]).abs().max()) <= step * 1.0001
    big = {"w": torch.randn(100, 100, generator=gen)}
    size = len(encode(codec.encode(big, None, gen)[0]))
    assert size < 0.26 * len(encode({k: raw(v) for k, v in big.items()}))
