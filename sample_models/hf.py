"""Hugging Face transformers models, built from configs (no download).

torch.fx cannot trace any of them, so execorder runs them eagerly:

    execorder trace sample_models/hf.py:tiny_llama --input input_ids=int64[1,16]@0:128
    execorder trace sample_models/hf.py:tiny_mixtral --input input_ids=int64[1,16]@0:128

and mixture-of-experts models at their real sizes, on the meta device:

    execorder trace sample_models/hf.py:mixtral_8x7b --input input_ids=int64[1,32]@0:32000

Needs ``pip install execorder[hf]``.
"""

from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    GptOssConfig,
    GptOssForCausalLM,
    Llama4ForCausalLM,
    Llama4TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

VOCAB = 128
_DECODER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": VOCAB,
}


def tiny_llama(layers: int = 2, tie: bool = True) -> LlamaForCausalLM:
    """Llama with its lm_head tied to the embedding."""
    return LlamaForCausalLM(
        LlamaConfig(**_DECODER, num_hidden_layers=layers, tie_word_embeddings=tie)
    )


def tiny_llama4(layers: int = 2) -> Llama4ForCausalLM:
    """Llama 4's text model, two experts a block; its ``base_model_prefix`` names no child."""
    config = Llama4TextConfig(
        hidden_size=32,
        intermediate_size=64,
        intermediate_size_mlp=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=VOCAB,
        num_local_experts=2,
        max_position_embeddings=64,
    )
    return Llama4ForCausalLM(config)


def tiny_gpt2(layers: int = 2) -> GPT2LMHeadModel:
    config = GPT2Config(
        n_embd=32,
        n_layer=layers,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def _bert(layers: int) -> BertConfig:
    return BertConfig(
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=VOCAB,
    )


def tiny_bert(layers: int = 2) -> BertModel:
    return BertModel(_bert(layers))


def tiny_bert_lm(layers: int = 2) -> BertForMaskedLM:
    """BERT with its masked-LM head, whose decoder is tied to the word embedding."""
    return BertForMaskedLM(_bert(layers))


def tiny_mixtral(layers: int = 2, experts: int = 8) -> MixtralForCausalLM:
    """Mixtral: a router picks 2 of ``experts`` per token (value-dependent)."""
    config = MixtralConfig(
        **_DECODER, num_hidden_layers=layers, num_local_experts=experts, num_experts_per_tok=2
    )
    return MixtralForCausalLM(config)


def mixtral_8x7b(experts: str = "grouped_mm") -> MixtralForCausalLM:
    """Mixtral-8x7B at its real size (46.7B parameters, ~190 GB in float32).

    ``experts`` is transformers' experts implementation: ``"grouped_mm"`` (its
    default: one fused kernel for all experts) or ``"eager"`` (a loop over
    the experts tokens were routed to).
    """
    return MixtralForCausalLM(MixtralConfig(experts_implementation=experts))


def qwen3_moe() -> Qwen3MoeForCausalLM:
    """Qwen3-MoE at transformers' default config (15.4B parameters, 128 experts a layer)."""
    return Qwen3MoeForCausalLM(Qwen3MoeConfig())


def gpt_oss_120b() -> GptOssForCausalLM:
    """gpt-oss-120b's shape, transformers' default config (117B parameters)."""
    return GptOssForCausalLM(GptOssConfig())
