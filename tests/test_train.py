"""Training the diffusion view: the dual-pass forward equals the inference draft, only the view learns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TEXT
from orthrus_min.consensus import generate_orthrus
from orthrus_min.model import Qwen3Config, Qwen3ForCausalLM, init_diffusion_view, load_model
from orthrus_min.tokenizer import Tokenizer
from orthrus_min.train import MODEL_PRESETS, dual_forward, heldout_prompts, load_corpus, main


def orthrus_micro(block_size: int, seed: int = 0, vocab: int = 60) -> Qwen3ForCausalLM:
    """A random 2-layer Orthrus model whose diffusion weights differ from the AR ones."""
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(Qwen3Config.from_dict(dict(model_type="qwen3", vocab_size=vocab, **MODEL_PRESETS["micro"])))
    init_diffusion_view(model, block_size, mask_token_id=vocab - 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("block_size, offset, seq_len", [(4, 0, 17), (5, 3, 23), (8, 7, 40), (1, 0, 9)],
                         ids=["K4-offset0", "K5-offset3", "K8-offset7", "K1"])
def test_training_block_logits_equal_the_draft_pass(block_size, offset, seq_len):
    """The test that ties training to decoding: every block of the dual-pass forward = the inference draft."""
    model = orthrus_micro(block_size, seed=block_size)
    ids = torch.randint(0, 59, (2, seq_len), generator=torch.Generator().manual_seed(offset))
    with torch.no_grad():
        teacher, student, starts = dual_forward(model, ids, block_size, offset)
        reference = model(ids)  # the AR view alone, without a cache
        assert ((teacher - reference).abs().max() / reference.abs().max()).item() <= 1e-5
        assert len(starts) == (seq_len - offset) // block_size
        for j, s in enumerate(starts.tolist()):
            cache = model.new_cache(seq_len + block_size, batch_size=2)
            if s:
                model(ids[:, :s], cache)  # the AR view's prefix in the cache
            block = torch.full((2, block_size), model.config.mask_token_id)
            block[:, 0] = ids[:, s]
            draft = model(block, cache, view="diffusion")  # (2, K, V)
            got = student[:, j * block_size : (j + 1) * block_size]
            assert ((got - draft).abs().max() / draft.abs().max()).item() <= 1e-5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny code corpus (12 files), its tokenizer, and a base model pretrained for a few steps by the CLI."""
    root = tmp_path_factory.mktemp("train")
    data = root / "data"
    data.mkdir()
    for i in range(12):
        (data / f"mod{i}.py").write_text(TEXT.replace("fibonacci", f"fib{i}") * 6)
    common = ["--data", str(data), "--heldout-percent", "25"]
    assert main(["tokenizer", *common, "--vocab-size", "300", "--out", str(root / "tok")]) == 0
    assert main(["pretrain", *common, "--tokenizer", str(root / "tok"), "--out", str(root / "base"), "--preset", "micro",
                 "--steps", "40", "--batch-size", "8", "--seq-len", "48", "--lr", "5e-3", "--eval-every", "20",
                 "--save-every", "20"]) == 0
    return root, common


def distill_args(root, common, out, steps):
    return ["distill", *common, "--model", str(root / "base"), "--out", str(out), "--block-size", "6", "--steps", str(steps),
            "--batch-size", "6", "--seq-len", "48", "--lr", "3e-3", "--warmup", "2", "--eval-every", "10", "--save-every", "5",
            "--eval-prompts", "3", "--eval-prompt-len", "12", "--eval-new-tokens", "20"]


def test_pretrain_loss_falls(corpus):
    root, _ = corpus
    log = [json.loads(line) for line in (root / "base" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["heldout_loss"] < log[19]["heldout_loss"] < np.log(300)
    assert np.mean([r["loss"] for r in log[-5:]]) < np.mean([r["loss"] for r in log[:5]]) - 1.0


def test_distill_loss_falls_and_base_weights_are_unchanged(corpus):
    root, common = corpus
    out = root / "orthrus"
    assert main(distill_args(root, common, out, 20)) == 0
    base, trained = load_model(root / "base"), load_model(out)
    assert trained.config.model_type == "orthrus" and trained.config.block_size == 6
    base_state, trained_state = base.state_dict(), trained.state_dict()
    for name, tensor in base_state.items():
        assert torch.equal(tensor, trained_state[name]), name  # bit for bit
    moved = [n for n in trained_state if "_diff" in n and "norm" not in n]
    init = base_state  # the diffusion view starts as a copy of the AR view
    assert all(not torch.equal(trained_state[n], init[n.replace("_diff", "")]) for n in moved)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if "loss" in line]
    assert np.mean([r["loss"] for r in log[-4:]]) < 0.7 * np.mean([r["loss"] for r in log[:4]])


def test_resume_continues_where_it_stopped(corpus):
    root, common = corpus
    out = root / "resumed"
    assert main(distill_args(root, common, out, 10)) == 0
    assert main(distill_args(root, common, out, 15) + ["--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(0, 11)) + list(range(11, 16))


def test_trainer_acceptance_equals_decoder(corpus):
    root, common = corpus
    out = root / "orthrus"
    if not (out / "model.safetensors").exists():
        assert main(distill_args(root, common, out, 20)) == 0
    last = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]
    model = load_model(out)
    _, heldout, _ = load_corpus(Tokenizer(out), [common[1]], "*.py", 25.0, out / "data")
    accepted = []
    for prompt in heldout_prompts(heldout, 3, 12):
        accepted += generate_orthrus(model, prompt, 20, block_size=6, ignore_eos=True).accepted
    assert round(float(np.mean(accepted)), 3) == last["heldout_acceptance"]


def test_several_training_block_sizes(corpus):
    root, common = corpus
    out = root / "multi_k"
    assert main(distill_args(root, common, out, 10) + ["--train-block-sizes", "2,6"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][1:]
    assert {r["block_size"] for r in log} == {2, 6}
    assert set(log[-1]["heldout_acceptance_by_block_size"]) == {"2"}
    assert 1 <= log[-1]["heldout_acceptance_by_block_size"]["2"] <= 2
    assert main(distill_args(root, common, root / "bad_k", 2) + ["--train-block-sizes", "7"]) == 2


def test_distill_loss_weights():
    """Uniform (the paper's mean), cross-entropy to the data, and the position-decay weighting, against plain formulas."""
    import torch.nn.functional as F

    from orthrus_min.train import distill_loss

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
