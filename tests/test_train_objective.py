"""The training objectives against decoding and against plain formulas: the dual-pass forward (also on packed rows)
equals the inference draft pass, the losses equal their definitions, checkpointing changes no gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from orthrus_min.config import Qwen3Config
from orthrus_min.model import Qwen3ForCausalLM, init_diffusion_view
from orthrus_min.train import MODEL_PRESETS, distill_loss, dual_forward
from orthrus_min.train.corpus import documents_from_lists
from orthrus_min.train.distill import sample_anchors
from orthrus_min.train.objective import (block_weights, causal_document_mask, enable_activation_checkpointing,
                                         next_token_loss, next_token_weights)
from orthrus_min.train.packing import Pool, make_rows

TOL = 1e-5  # max |a - b| / max |b| between training and inference logits (fp32); measured: 3.9e-7 at most


def orthrus_micro(block_size: int, seed: int = 0, vocab: int = 60) -> Qwen3ForCausalLM:
    """A random 2-layer Orthrus model whose diffusion weights differ from the AR ones."""
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config.from_dict(dict(model_type="qwen3", vocab_size=vocab, **MODEL_PRESETS["micro"])))
    init_diffusion_view(model, block_size, mask_token_id=vocab - 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def inference_draft(model, prefix: torch.Tensor, first: int, block_size: int, positions_from: int = 0) -> torch.Tensor:
    """The decoder's draft pass: the AR view caches `prefix` (1, P), then a diffusion pass over [first, MASK, …]."""
    cache = model.new_cache(prefix.shape[1] + block_size + 1)
    if prefix.shape[1]:
        model(prefix, cache)
    block = torch.full((1, block_size), model.config.mask_token_id)
    block[0, 0] = first
    return model(block, cache, view="diffusion")  # (1, K, V)


@pytest.mark.parametrize("block_size, offset, seq_len", [(4, 0, 17), (5, 3, 23), (8, 7, 40), (1, 0, 9)],
                         ids=["K4-offset0", "K5-offset3", "K8-offset7", "K1"])
def test_training_block_logits_equal_the_draft_pass(block_size, offset, seq_len):
    """The test that ties training to decoding: every block of the dual-pass forward = the inference draft."""
    model = orthrus_micro(block_size, seed=block_size)
    ids = torch.randint(0, 59, (2, seq_len), generator=torch.Generator().manual_seed(offset))
    with torch.no_grad():
        teacher, student, starts = dual_forward(model, ids, block_size, offset)
        reference = model(ids)  # the AR view alone, without a cache
        assert rel(teacher, reference) <= TOL
        assert len(starts) == (seq_len - offset) // block_size
        for j, s in enumerate(starts.tolist()):
            cache = model.new_cache(seq_len + block_size, batch_size=2)
            if s:
                model(ids[:, :s], cache)  # the AR view's prefix in the cache
            block = torch.full((2, block_size), model.config.mask_token_id)
            block[:, 0] = ids[:, s]
            draft = model(block, cache, view="diffusion")  # (2, K, V)
            got = student[:, j * block_size : (j + 1) * block_size]
            assert rel(got, draft) <= TOL


def packed_fixture(seq_len: int = 24):
    """Two packed rows of documents of lengths (9, 7, 5 + padding) and (11, 13), random ids."""
    g = np.random.default_rng(0)
    docs = [g.integers(0, 59, n).tolist() for n in (9, 7, 5, 11, 13)]
    pool = Pool("docs", documents_from_lists(docs))
    rows = make_rows([pool], [np.array([[0, 0, 0, 9], [0, 1, 0, 7], [0, 2, 0, 5]]), np.array([[0, 3, 0, 11], [0, 4, 0, 13]])],
                     seq_len, pad_id=0, refs=[(0, 0), (0, 1)])
    return docs, rows


def test_packed_rows_equal_each_document_alone():
    """Packed rows: the teacher's logits of each document equal the AR view on that document alone, and every anchor
    block's draft equals the decoder's draft on its own document (positions restart, no attention across documents)."""
    K = 4
    model = orthrus_micro(K, seed=11)
    docs, rows = packed_fixture()
    assert rows.doc[0].tolist() == [0] * 9 + [1] * 7 + [2] * 5 + [3] * 3 and rows.pos[0, 9:16].tolist() == list(range(7))
    assert rows.real[0].sum() == 21 and not rows.loss[0, 21:].any()
    starts, valid = sample_anchors(rows, 6, seed=3)
    assert valid.all()
    with torch.no_grad():
        teacher, student, _ = dual_forward(model, rows.ids, K, starts=starts, doc=rows.doc, pos=rows.pos)
        where = {0: [(0, 0), (1, 9), (2, 16)], 1: [(3, 0), (4, 11)]}  # row -> (document, first column)
        for b, placed in where.items():
            for d, col in placed:
                n = len(docs[d])
                alone = model(torch.tensor([docs[d]]))  # (1, n, V)
                assert rel(teacher[b, col : col + n], alone[0]) <= TOL
            for j, s in enumerate(starts[b].tolist()):
                d, col = max((p for p in placed if p[1] <= s), key=lambda p: p[1])
                doc = torch.tensor([docs[d]])
                draft = inference_draft(model, doc[:, : s - col], docs[d][s - col], K)
                assert rel(student[b, j * K : (j + 1) * K], draft[0]) <= TOL


def test_anchors_stay_inside_trained_documents_and_depend_only_on_the_row():
    docs, rows = packed_fixture()
    starts, valid = sample_anchors(rows, 40, seed=5)  # more than there are: every usable anchor, padded
    for b in range(2):
        s = starts[b][valid[b]]
        assert (rows.doc[b, s] == rows.doc[b, s + 1]).all() and rows.loss[b, s + 1].all()
        usable = int(((rows.doc[b, :-1] == rows.doc[b, 1:]) & rows.loss[b, 1:]).sum())
        assert len(s) == usable  # 8 + 6 + 4 = 18 in row 0, 10 + 12 = 22 in row 1
    assert valid.sum(1).tolist() == [18, 22]
    one, _ = sample_anchors(make_rows(rows_pool(docs), [row_pieces(1)], 24, 0, refs=[(0, 1)]), 5, seed=5)
    both, _ = sample_anchors(rows, 5, seed=5)
    assert torch.equal(one[0], both[1])  # a row's anchors do not depend on the other rows of its batch
    weights = block_weights(both, 4, rows.loss, rows.doc)
    assert weights.shape == (2, 5, 3)
    target = both[:, :, None] + 1 + torch.arange(3)
    inside = target < 24
    ok = inside & (rows.doc.gather(1, target.clamp(max=23).flatten(1)).view_as(target) == rows.doc.gather(1, both)[:, :, None])
    assert torch.equal(weights, ok & rows.loss.gather(1, target.clamp(max=23).flatten(1)).view_as(target))


def rows_pool(docs):
    return [Pool("docs", documents_from_lists(docs))]


def row_pieces(row: int) -> np.ndarray:
    return np.array([[0, 3, 0, 11], [0, 4, 0, 13]]) if row == 1 else np.array([[0, 0, 0, 9], [0, 1, 0, 7], [0, 2, 0, 5]])


def test_document_mask_is_block_diagonal_causal():
    doc = torch.tensor([[0, 0, 1, 1, 1, 2]])
    mask = causal_document_mask(doc, capacity=8)[0, 0]
    expected = torch.zeros(6, 8, dtype=torch.bool)
    for q in range(6):
        for k in range(6):
            expected[q, k] = k <= q and doc[0, k] == doc[0, q]
    assert torch.equal(mask, expected)


def test_distill_loss_weights():
    """Uniform (the paper's mean), cross-entropy to the data, position decay, per-row anchors and draft weights with an
    outside normalizer, against plain formulas."""
    g = torch.Generator().manual_seed(0)
    K, starts = 4, torch.tensor([1, 5])
    teacher, student = torch.randn(2, 10, 7, generator=g), torch.randn(2, 8, 7, generator=g)
    ids = torch.randint(0, 7, (2, 10), generator=g)
    kl = torch.zeros(2, 2, K - 1)  # (B, block, index)
    for j, s in enumerate(starts.tolist()):
        for i in range(K - 1):
            log_p, log_q = teacher[:, s + i].log_softmax(-1), student[:, j * K + i].log_softmax(-1)
            kl[:, j, i] = (log_p.exp() * (log_p - log_q)).sum(-1)
    assert torch.allclose(distill_loss(teacher, student, ids, starts, K), kl.mean())
    w = 0.5 ** torch.arange(K - 1.0)
    assert torch.allclose(distill_loss(teacher, student, ids, starts, K, position_decay=0.5), (kl * w).sum(-1).mean() / w.sum())
    keep = [j * K + i for j in range(2) for i in range(K - 1)]
    targets = ids[:, [s + i + 1 for s in starts.tolist() for i in range(K - 1)]]
    ce = F.cross_entropy(student[:, keep].flatten(0, 1), targets.flatten())
    assert torch.allclose(distill_loss(teacher, student, ids, starts, K, "ce"), ce)
    weights = torch.rand(2, 2, K - 1, generator=g) > 0.4
    got = distill_loss(teacher, student, ids, starts.expand(2, -1), K, position_decay=0.5, weights=weights, normalizer=3.0)
    assert torch.allclose(got, (kl * w * weights).sum() / 3.0)


def test_next_token_loss_counts_only_same_document_targets():
    g = torch.Generator().manual_seed(1)
    logits, ids = torch.randn(1, 6, 9, generator=g), torch.randint(0, 9, (1, 6), generator=g)
    doc, loss = torch.tensor([[0, 0, 0, 1, 1, 2]]), torch.tensor([[True, True, False, True, True, False]])
    weights = next_token_weights(loss, doc)
    assert weights.tolist() == [[True, False, False, True, False]]  # t=0->1; t=3->4 (t=2->3 crosses documents)
    expected = (F.cross_entropy(logits[0, [0, 3]], ids[0, [1, 4]], reduction="sum")) / 2
    assert torch.allclose(next_token_loss(logits, ids, weights), expected)


def test_activation_checkpointing_gives_the_same_gradients():
    model = orthrus_micro(4, seed=2)
    ids = torch.randint(0, 59, (2, 20), generator=torch.Generator().manual_seed(2))

    def grads(m):
        m.zero_grad()
        teacher, student, starts = dual_forward(m, ids, 4, 1)
        distill_loss(teacher, student, ids, starts, 4).backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if "_diff" in n}

    for n, p in model.named_parameters():
        p.requires_grad_("_diff" in n)
    plain = grads(model)
    enable_activation_checkpointing(model)
    again = grads(model)
    assert max((plain[n] - again[n]).abs().max().item() for n in plain) <= 1e-6  # measured: 0 (same ops, same order)
