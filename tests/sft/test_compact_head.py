"""The compact LM head (sft/compact_head.py): on a CPU, TRL's fused head projects only the labelled positions,
and the loss, the logged per-token fields and the gradients are those of TRL's own all-positions path."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from trl.trainer.utils import add_fused_lm_head

from sft.compact_head import compact_head, compact_positions
from sft.data import AudioCollator, build_examples, load_records
from sqrl.backbones import IGNORE_INDEX, get_backbone
from sqrl.prompts import Rubric


@pytest.fixture(scope="module")
def setup(tiny_manifest):
    torch.manual_seed(0)
    backbone = get_backbone("tiny-qwen2-audio", window_s=5)
    base, processor = backbone.load()
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does, before PEFT
    model = backbone.apply_lora(base, rank=8)
    model.train()
    records = load_records(tiny_manifest)[:3]
    examples = build_examples(records, Rubric("configs/rubrics/compact.yaml"), "all_dimensions")
    batch = AudioCollator(backbone.name, processor, 5.0, {"window_s": 5})(examples)
    return model, batch


def _step(model, batch):
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout masks in both passes
    with FlopCounterMode(display=False) as counter:
        out = model(**batch, fused_lm_head=True)
        out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads, counter.get_total_flops()


def test_the_compact_head_gives_trls_loss_and_gradients_for_fewer_flops(setup):
    model, batch = setup
    labels = batch["labels"][:, 1:]
    labelled, positions = int((labels != IGNORE_INDEX).sum()), labels.numel()
    assert labelled < positions / 2  # audio frames and the prompt carry no loss

    full, full_grads, full_flops = _step(model, batch)
    with compact_positions() as hooked:
        compact, compact_grads, compact_flops = _step(model, batch)
    assert hooked

    torch.testing.assert_close(compact.loss, full.loss, rtol=1e-5, atol=1e-6)
    for field in ("log_probs", "entropy", "is_top1"):
        torch.testing.assert_close(getattr(compact, field), getattr(full, field), rtol=1e-4, atol=1e-5)
    assert full_grads.keys() == compact_grads.keys() and len(full_grads) > 10
    for name, grad in full_grads.items():
        torch.testing.assert_close(compact_grads[name], grad, rtol=1e-3, atol=1e-6, msg=name)

    # the head's three vocabulary-wide matmuls (forward, recomputed tile, hidden gradient) on the unlabelled
    # positions are what is saved; torch's counter does not see the third, an in-place addmm_, so it counts
    # 2 x 2 x hidden x vocab FLOPs per position
    head = model.get_output_embeddings().weight
    saved = 2 * 2 * head.shape[0] * head.shape[1] * (positions - labelled)
    assert full_flops - compact_flops == pytest.approx(saved, rel=0.01)


def test_the_hook_is_restored_and_the_trainer_wrapper_keeps_its_parent():
    import trl.trainer.utils as trl_utils

    before = trl_utils._use_triton
    with compact_positions():
        assert trl_utils._use_triton(torch.device("cpu"))
    assert trl_utils._use_triton is before and not before(torch.device("cpu"))

    class Parent:
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return trl_utils._use_triton(torch.device("cpu")), inputs, num_items_in_batch

    assert compact_head(Parent)().compute_loss(None, "x", num_items_in_batch=3) == (True, "x", 3)
    assert compact_head(Parent).__name__ == "CompactHeadParent"
