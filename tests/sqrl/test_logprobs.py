from types import SimpleNamespace

import torch

from sqrl.logprobs import completion_logprobs, token_logprobs


def test_token_logprobs_equal_log_softmax_gather():
    logits = torch.randn(5, 7, 11)
    targets = torch.randint(0, 11, (5, 7))
    expected = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    assert torch.allclose(token_logprobs(logits, targets, chunk=2), expected, atol=1e-6)


class TinyLM(torch.nn.Module):
    """A causal toy: each position's logits depend on the tokens up to it (a running mean of embeddings)."""

    def __init__(self, vocab=13, keep_arg=True, exposes_head=False):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = torch.nn.Embedding(vocab, 8), torch.nn.Linear(8, vocab)
        self.head_rows = []  # positions the head projected, per call
        self.head.register_forward_hook(lambda _m, args, _out: self.head_rows.append(args[0].shape[1]))
        if not keep_arg:
            self.forward = self._forward_all
        if exposes_head:
            self.get_output_embeddings = lambda: self.head

    def _forward_all(self, input_ids, attention_mask=None):
        h = self.emb(input_ids).cumsum(1) / torch.arange(1, input_ids.shape[1] + 1)[None, :, None]
        return SimpleNamespace(logits=self.head(h))

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
        logits = self._forward_all(input_ids).logits
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def _by_hand(model, ids, mask):
    logp = model._forward_all(ids).logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    return [row[m[1:].bool()].tolist() for row, m in zip(logp, mask)]


def test_completion_logprobs_read_each_completion_token_with_or_without_logits_to_keep():
    ids = torch.tensor([[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 10, 11]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]])  # right-padded: completions after the prompt
    for model, head_rows in ((TinyLM(keep_arg=True), 6), (TinyLM(keep_arg=False), 6),
                             (TinyLM(keep_arg=False, exposes_head=True), 5)):
        model.head_rows.clear()
        logps, kept = completion_logprobs(model, {"input_ids": ids}, mask)
        # the head sees every position, or (a model without logits_to_keep whose head the hook can reach)
        # only those from position 1 on: keep = 6 - 2 + 1 (logits_to_keep itself slices after the head here)
        assert model.head_rows == [head_rows]
        assert kept.shape == logps.shape == (2, 4)  # from the earliest completion start (position 2) on
        got = [row[m.bool()].tolist() for row, m in zip(logps, kept)]
        expected = _by_hand(model, ids, mask)
        assert [len(r) for r in got] == [3, 3]
        for g, e in zip(got, expected):
            assert torch.allclose(torch.tensor(g), torch.tensor(e), atol=1e-6)


def test_a_real_audio_llm_without_logits_to_keep_gives_the_full_forwards_logprobs(tmp_path, monkeypatch):
    # transformers' Qwen2-Audio has no logits_to_keep: the head hook must give what the full logits give
    import numpy as np

    from sqrl.backbones import get_backbone
    from sqrl.logprobs import _accepts_logits_to_keep

    monkeypatch.setenv("SQRL_CACHE", str(tmp_path))
    backbone = get_backbone("tiny-qwen2-audio", window_s=5)
    model, processor = backbone.load()
    assert not _accepts_logits_to_keep(model)
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(16_000 * s).astype(np.float32) * 0.1 for s in (1, 3)]
    batch = backbone.build_inputs(processor, waves, ["Rate the noise.", "Rate it."], answers=["Noise: 4/5", "Noise: 2/5 hiss"])
    mask = batch.pop("completion_mask")
    batch.pop("labels")
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[1]))
    with torch.no_grad():
        logps, kept = completion_logprobs(model, dict(batch), mask)
        full = model(**batch).logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    width, first = batch["input_ids"].shape[1], int(mask.float().argmax(1).min())
    assert seen[0] == width - first + 1 < width and seen[1] == width  # the hooked call, then the full one
    for row in range(2):
        expected = full[row][mask[row, 1:].bool()]
        torch.testing.assert_close(logps[row][kept[row].bool()], expected, rtol=1e-5, atol=1e-5)
