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

    def __init__(self, vocab=13, keep_arg=True):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = torch.nn.Embedding(vocab, 8), torch.nn.Linear(8, vocab)
        if not keep_arg:
            self.forward = self._forward_all

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
    for model in (TinyLM(keep_arg=True), TinyLM(keep_arg=False)):
        logps, kept = completion_logprobs(model, {"input_ids": ids}, mask)
        assert kept.shape == logps.shape == (2, 4)  # from the earliest completion start (position 2) on
        got = [row[m.bool()].tolist() for row, m in zip(logps, kept)]
        expected = _by_hand(model, ids, mask)
        assert [len(r) for r in got] == [3, 3]
        for g, e in zip(got, expected):
            assert torch.allclose(torch.tensor(g), torch.tensor(e), atol=1e-6)
