"""The KV cache: per-row lengths, writes to each row's own slots, roll back as a length change, the attention mask."""

from __future__ import annotations

import pytest
import torch

from orthrus_min.errors import OrthrusError
from orthrus_min.kvcache import KVCache
from orthrus_min.model import attention, block_mask, plan_attention


def test_rollback_is_a_length_change():
    cache = KVCache(2, 1, 2, 8, 4)
    k = torch.randn(1, 2, 5, 4)
    keys, _ = cache.write(0, k, k)
    cache.advance(5)
    pointers = [t.data_ptr() for t in cache.k + cache.v]
    cache.rollback(3)
    assert cache.lengths.tolist() == [3] and [t.data_ptr() for t in cache.k + cache.v] == pointers
    assert torch.equal(cache.keys(0), k[0, :, :3]) and torch.equal(keys[:, :, :5], k)
    assert cache.nbytes() == 2 * 2 * 1 * 2 * 8 * 4 * 4  # (K and V) x layers x B x Hkv x S x D x 4 bytes


def test_each_row_writes_after_its_own_length():
    cache = KVCache(1, 3, 1, 10, 2)
    cache.advance(4)
    cache.rollback(torch.tensor([1, 4, 0]))  # rows of different lengths
    before = cache.k[0].clone()
    block = torch.arange(3 * 2 * 2, dtype=torch.float32).view(3, 1, 2, 2)  # (B, Hkv, T=2, D)
    cache.write(0, block, block)
    for b, L in enumerate([1, 4, 0]):
        assert torch.equal(cache.k[0][b, :, L : L + 2], block[b])  # the block lands in slots L_b, L_b + 1 ...
        untouched = [s for s in range(10) if s not in (L, L + 1)]
        assert torch.equal(cache.k[0][b, :, untouched], before[b, :, untouched])  # ... and nowhere else
    assert cache.slots(2).tolist() == [[1, 2], [4, 5], [0, 1]]


def test_full_cache_and_bad_rollback_are_errors():
    cache = KVCache(1, 2, 1, 4, 2)
    cache.advance(3)
    block = torch.zeros(2, 1, 2, 2)  # (B, Hkv, T, D): 3 cached + 2 new tokens > capacity 4
    with pytest.raises(IndexError, match="out of bounds"):  # torch's own bounds check on the write (the doors size caches)
        cache.write(0, block, block)
    with pytest.raises(OrthrusError, match=r"cannot roll the KV cache back to \[5, 1\]: it holds \[3, 3\] entries"):
        cache.rollback(torch.tensor([5, 1]))
    with pytest.raises(OrthrusError, match="KV cache batch size must be at least 1, got 0"):
        KVCache(1, 0, 1, 4, 2)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_block_mask_is_the_per_row_rule(causal):
    lengths, T, S = torch.tensor([0, 3, 5]), 3, 9
    mask = block_mask(lengths, T, S, causal)  # (B, 1, T, S)
    for b, L in enumerate(lengths.tolist()):
        for i in range(T):
            last = L + i if causal else L + T - 1  # the last slot query i of row b may see
            assert mask[b, 0, i].tolist() == [s <= last for s in range(S)]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_per_row_attention_equals_a_loop_of_batch_one(causal, backend):
    """Rows of lengths 0, 7 and 19 over one cache-shaped k, v: each row equals the batch-1 attention of that row
    alone over exactly its keys (prefix + block, the reference of triton_attn.py with L = S - T)."""
    from orthrus_min.triton_attn import reference_block_attention  # triton runs in its interpreter on the CPU (conftest)

    g = torch.Generator().manual_seed(0)
    B, H, Hkv, T, S, D = 3, 4, 2, 5, 30, 16
    lengths = torch.tensor([0, 7, 19])
    q, k, v = (torch.randn(B, h, n, D, generator=g) for h, n in ((H, T), (Hkv, S), (Hkv, S)))
    got = attention(q, k, v, plan_attention(causal, T, S, lengths, backend=backend))  # (B, H, T, D)
    for b, L in enumerate(lengths.tolist()):
        alone = reference_block_attention(q[b : b + 1], k[b : b + 1, :, : L + T], v[b : b + 1, :, : L + T], causal)
        torch.testing.assert_close(got[b : b + 1], alone, rtol=1e-5, atol=1e-5)
