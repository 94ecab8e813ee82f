"""Tiny Hugging Face transformers models, built from configs (no download).

torch.fx cannot trace any of them, so execorder runs them eagerly:

    execorder trace sample_models/hf.py:tiny_llama --input input_ids=int64[1,16]@0:128
    execorder trace sample_models/hf.py:tiny_mixtral --input input_ids=int64[1,16]@0:128

Needs ``pip install execorder[hf]``.
"""

from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
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


def tiny_bert(layers: int = 2) -> BertModel:
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=VOCAB,
    )
    return BertModel(config)


def tiny_mixtral(layers: int = 2, experts: int = 8) -> MixtralForCausalLM:
    """Mixtral: a router picks 2 of ``experts`` per token (value-dependent)."""
    config = MixtralConfig(
        **_DECODER, num_hidden_layers=layers, num_local_experts=experts, num_experts_per_tok=2
    )
    return MixtralForCausalLM(config)
