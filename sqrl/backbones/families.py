"""What differs between the two audio-LLM families: classes, placeholders, chat templates, tiny configs.

Everything else (batching, labels, LoRA, vLLM prompts) is shared code in ``sqrl.backbones.core``.
Both families are a Whisper-style encoder (conv stride 2, then average pooling by 2: 25 audio tokens
per second), a projector, and a Qwen2 LLM, with the modules at ``model.audio_tower``,
``model.multi_modal_projector`` and ``model.language_model`` in transformers 5.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from transformers import (
    AudioFlamingo3Config,
    AudioFlamingo3ForConditionalGeneration,
    AudioFlamingo3Processor,
    PretrainedConfig,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
)

from sqrl.backbones.tokenizer import IM_END, PAD_TOKEN

# Whisper front end: 100 mel frames per second; conv2 (stride 2) leaves 50 encoder positions per second.
MEL_FRAMES_PER_SECOND = 100
ENCODER_POSITIONS_PER_SECOND = 50


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a tiny backbone built offline; the defaults are what vLLM on CPU was measured to accept.

    ``window_s`` is the Whisper window in seconds: the feature extractor pads every clip (AF3: every
    window of a clip) to ``window_s`` seconds and the encoder has ``50 * window_s`` positions. vLLM's
    own classes check exactly 3000 mel frames (``window_s=30``); the vllm rollout backend serves a
    Qwen2-Audio build of another window through ``grpo.vllm_window``, an AF3 build only at 30. Shorter
    windows run every other code path unchanged and are much cheaper on CPU.
    """

    hidden_size: int = 128
    num_attention_heads: int = 4
    num_hidden_layers: int = 2
    intermediate_size: int = 256
    encoder_hidden_size: int = 64
    encoder_attention_heads: int = 2
    encoder_layers: int = 1
    encoder_ffn_size: int = 256
    window_s: int = 30
    vocab_size: int = 3072
    max_position_embeddings: int = 4096
    lm_head_std: float = 0.1
    """Init std of the LM head (see sqrl/backbones/tiny.py: a usable logit scale for a frozen head)."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
                     "encoder_hidden_size", "encoder_attention_heads", "encoder_layers", "encoder_ffn_size",
                     "window_s", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TinySpec.{name} must be a positive integer, got {value!r}")
        # vLLM's CPU attention needs head_dim >= 32; keep the tiny models servable by it.
        for hidden, heads, what in ((self.hidden_size, self.num_attention_heads, "LLM"),
                                    (self.encoder_hidden_size, self.encoder_attention_heads, "encoder")):
            if hidden % heads or hidden // heads < 32:
                raise ValueError(f"{what} head_dim must be an integer >= 32 (vLLM needs it); "
                                 f"got hidden {hidden} / heads {heads}")

    @property
    def max_source_positions(self) -> int:
        return ENCODER_POSITIONS_PER_SECOND * self.window_s


def _text_config(spec: TinySpec, tokenizer: Any) -> dict[str, Any]:
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    return dict(
        model_type="qwen2",
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        eos_token_id=im_end,
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
        bos_token_id=None,
        tie_word_embeddings=False,
    )


def _af3_config(spec: TinySpec, tokenizer: Any) -> PretrainedConfig:
    audio = dict(
        model_type="audioflamingo3_encoder",
        num_mel_bins=128,
        hidden_size=spec.encoder_hidden_size,
        num_attention_heads=spec.encoder_attention_heads,
        num_hidden_layers=spec.encoder_layers,
        intermediate_size=spec.encoder_ffn_size,
        max_source_positions=spec.max_source_positions,
    )
    return AudioFlamingo3Config(
        audio_config=audio,
        text_config=_text_config(spec, tokenizer),
        audio_token_id=tokenizer.convert_tokens_to_ids("<sound>"),
    )


def _qwen2_audio_config(spec: TinySpec, tokenizer: Any) -> PretrainedConfig:
    audio = dict(
        model_type="qwen2_audio_encoder",
        num_mel_bins=128,
        d_model=spec.encoder_hidden_size,
        encoder_attention_heads=spec.encoder_attention_heads,
        encoder_layers=spec.encoder_layers,
        encoder_ffn_dim=spec.encoder_ffn_size,
        max_source_positions=spec.max_source_positions,
    )
    return Qwen2AudioConfig(
        audio_config=audio,
        text_config=_text_config(spec, tokenizer),
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )


# The processor template of nvidia/audio-flamingo-3-hf (as written by transformers' conversion script):
# a default system turn, then the user turn as "<sound>" followed by the text.
AF3_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages if m['content'] is not none %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% set audio = namespace(found=False) %}{% set text_buf = namespace(v='') %}"
    "{% for c in m['content'] %}"
    "{% if c.get('type') == 'audio' or 'audio' in c %}{% set audio.found = True %}"
    "{% elif c.get('type') == 'text' or 'text' in c %}{% set text_buf.v = text_buf.v + c['text'] %}{% endif %}"
    "{% endfor %}{% if audio.found %}{{ '<sound>' }}{% endif %}{{ text_buf.v }}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A text-only ChatML template for the tokenizer itself (the processors carry the audio-aware ones).
TEXT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _af3_processor(feature_extractor: Any, tokenizer: Any) -> AudioFlamingo3Processor:
    # max_audio_len stays at its default (600 s): a small value broke vLLM's profiling run.
    return AudioFlamingo3Processor(feature_extractor, tokenizer, chat_template=AF3_CHAT_TEMPLATE)


def _qwen2_audio_processor(feature_extractor: Any, tokenizer: Any) -> Qwen2AudioProcessor:
    # Without a template the processor takes its default, Qwen2-Audio-Instruct's ("Audio 1: <|audio_bos|>...").
    return Qwen2AudioProcessor(feature_extractor, tokenizer)


@dataclass(frozen=True)
class Family:
    """The family-specific facts a ``Backbone`` needs; see the two instances below."""

    key: str
    model_type: str
    model_cls: type
    processor_cls: type
    # What the chat template writes for one clip; vLLM finds the clip by this exact text.
    audio_placeholder: str
    # Name of the mel-frame mask in the processor output / model forward.
    feature_mask_key: str
    # True when clips longer than the window are cut (Qwen2-Audio); AF3 splits them into windows.
    truncates_long_audio: bool
    make_config: Callable[[TinySpec, Any], PretrainedConfig]
    make_processor: Callable[[Any, Any], Any]
    end_of_turn: str = IM_END


AF3 = Family(
    key="af3",
    model_type="audioflamingo3",
    model_cls=AudioFlamingo3ForConditionalGeneration,
    processor_cls=AudioFlamingo3Processor,
    audio_placeholder="<sound>",
    feature_mask_key="input_features_mask",
    truncates_long_audio=False,
    make_config=_af3_config,
    make_processor=_af3_processor,
)

QWEN2_AUDIO = Family(
    key="qwen2-audio",
    model_type="qwen2_audio",
    model_cls=Qwen2AudioForConditionalGeneration,
    processor_cls=Qwen2AudioProcessor,
    audio_placeholder="<|audio_bos|><|AUDIO|><|audio_eos|>",
    feature_mask_key="feature_attention_mask",
    truncates_long_audio=True,
    make_config=_qwen2_audio_config,
    make_processor=_qwen2_audio_processor,
)
