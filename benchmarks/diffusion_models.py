"""diffusers' models people train, each built small from a config, with a batch for it.

Each entry gives the class name, the constructor's keyword arguments (small
widths and one or two blocks, so that two ranks train it on CPU) and the
batch of one training step (a seed's: each rank draws its own). Shapes follow
each model's own forward: latents, a timestep, the text encoder's states.
The loss of a step is the mean square of every floating output (a ControlNet
returns one residual per block: a step trains them all).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Batch = Callable[[torch.Generator], dict[str, Any]]


def _n(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator)


def _t(*steps: float) -> torch.Tensor:
    return torch.tensor(steps)


_UNET = {
    "layers_per_block": 1,
    "block_out_channels": (32, 64),
    "norm_num_groups": 8,
    "attention_head_dim": 8,
}


def _unet(g: torch.Generator) -> dict[str, Any]:
    return {
        "sample": _n(g, 2, 4, 16, 16),
        "timestep": _t(10, 20),
        "encoder_hidden_states": _n(g, 2, 7, 32),
    }


def _flux(g: torch.Generator) -> dict[str, Any]:
    return {
        "hidden_states": _n(g, 1, 16, 4),
        "encoder_hidden_states": _n(g, 1, 8, 32),
        "timestep": _t(0.5),
        "img_ids": torch.zeros(16, 3),
        "txt_ids": torch.zeros(8, 3),
    }


def _sd3(g: torch.Generator) -> dict[str, Any]:
    return {
        "hidden_states": _n(g, 2, 4, 8, 8),
        "encoder_hidden_states": _n(g, 2, 5, 16),
        "pooled_projections": _n(g, 2, 32),
        "timestep": _t(10, 20),
    }


_SD3 = {
    "sample_size": 8,
    "patch_size": 1,
    "in_channels": 4,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "caption_projection_dim": 16,
    "joint_attention_dim": 16,
    "pooled_projection_dim": 32,
    "out_channels": 4,
    "pos_embed_max_size": 16,
}
_FLUX = {
    "patch_size": 1,
    "in_channels": 4,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "axes_dims_rope": (4, 4, 8),
}

MODELS: dict[str, tuple[str, dict[str, Any], Batch]] = {
    "unet2d": (
        "UNet2DModel",
        {
            **_UNET,
            "sample_size": 16,
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
            "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
        },
        lambda g: {"sample": _n(g, 2, 3, 16, 16), "timestep": _t(10, 20)},
    ),
    "sd15-unet": (
        "UNet2DConditionModel",
        {
            **_UNET,
            "sample_size": 16,
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "cross_attention_dim": 32,
        },
        _unet,
    ),
    "sdxl-unet": (
        "UNet2DConditionModel",
        {
            **_UNET,
            "sample_size": 16,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": 32,
            "attention_head_dim": (2, 4),
            "use_linear_projection": True,
            "transformer_layers_per_block": (1, 2),
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 80,
        },
        lambda g: {
            **_unet(g),
            "added_cond_kwargs": {"text_embeds": _n(g, 2, 32), "time_ids": _n(g, 2, 6)},
        },
    ),
    "controlnet": (
        "ControlNetModel",
        {
            **_UNET,
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "cross_attention_dim": 32,
            "conditioning_embedding_out_channels": (16, 32),
        },
        lambda g: {**_unet(g), "controlnet_cond": _n(g, 2, 3, 32, 32)},
    ),
    "vae": (
        "AutoencoderKL",
        {
            "block_out_channels": (32, 64),
            "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2,
            "latent_channels": 4,
            "norm_num_groups": 8,
        },
        lambda g: {"sample": _n(g, 2, 3, 32, 32)},
    ),
    "dit": (
        "DiTTransformer2DModel",
        {
            "num_attention_heads": 2,
            "attention_head_dim": 8,
            "in_channels": 4,
            "out_channels": 8,
            "num_layers": 2,
            "sample_size": 8,
            "patch_size": 2,
            "num_embeds_ada_norm": 1000,
        },
        lambda g: {
            "hidden_states": _n(g, 2, 4, 8, 8),
            "timestep": _t(10, 20).long(),
            "class_labels": torch.tensor([1, 2]),
        },
    ),
    "pixart": (
        "PixArtTransformer2DModel",
        {
            "sample_size": 8,
            "num_layers": 2,
            "patch_size": 2,
            "attention_head_dim": 8,
            "num_attention_heads": 3,
            "caption_channels": 32,
            "in_channels": 4,
            "cross_attention_dim": 24,
            "out_channels": 8,
            "attention_bias": True,
            "activation_fn": "gelu-approximate",
            "num_embeds_ada_norm": 1000,
            "norm_type": "ada_norm_single",
            "norm_elementwise_affine": False,
            "norm_eps": 1e-6,
        },
        lambda g: {
            "hidden_states": _n(g, 2, 4, 8, 8),
            "encoder_hidden_states": _n(g, 2, 7, 32),
            "timestep": _t(10, 20).long(),
            "added_cond_kwargs": {"aspect_ratio": None, "resolution": None},
        },
    ),
    "sd3": ("SD3Transformer2DModel", _SD3, _sd3),
    "sd3.5": (
        "SD3Transformer2DModel",
        {**_SD3, "dual_attention_layers": (0,), "qk_norm": "rms_norm"},
        _sd3,
    ),
    "flux": (
        "FluxTransformer2DModel",
        {**_FLUX, "pooled_projection_dim": 32},
        lambda g: {**_flux(g), "pooled_projections": _n(g, 1, 32)},
    ),
    "flux-dev": (
        "FluxTransformer2DModel",
        {**_FLUX, "pooled_projection_dim": 32, "guidance_embeds": True},
        lambda g: {**_flux(g), "pooled_projections": _n(g, 1, 32), "guidance": _t(3.5)},
    ),
    "chroma": (
        "ChromaTransformer2DModel",
        {
            **_FLUX,
            "approximator_num_channels": 8,
            "approximator_hidden_dim": 16,
            "approximator_layers": 1,
        },
        _flux,
    ),
    "auraflow": (
        "AuraFlowTransformer2DModel",
        {
            "sample_size": 8,
            "patch_size": 2,
            "in_channels": 4,
            "num_mmdit_layers": 1,
            "num_single_dit_layers": 1,
            "attention_head_dim": 8,
            "num_attention_heads": 2,
            "joint_attention_dim": 16,
            "caption_projection_dim": 16,
            "out_channels": 4,
            "pos_embed_max_size": 64,
        },
        lambda g: {
            "hidden_states": _n(g, 2, 4, 8, 8),
            "encoder_hidden_states": _n(g, 2, 5, 16),
            "timestep": _t(10, 20),
        },
    ),
    "lumina2": (
        "Lumina2Transformer2DModel",
        {
            "sample_size": 8,
            "patch_size": 2,
            "in_channels": 4,
            "hidden_size": 16,
            "num_layers": 2,
            "num_refiner_layers": 1,
            "num_attention_heads": 2,
            "num_kv_heads": 1,
            "multiple_of": 16,
            "axes_dim_rope": (4, 2, 2),
            "axes_lens": (32, 32, 32),
            "cap_feat_dim": 8,
        },
        lambda g: {
            "hidden_states": _n(g, 2, 4, 8, 8),
            "timestep": _t(0.5, 0.2),
            "encoder_hidden_states": _n(g, 2, 6, 8),
            "encoder_attention_mask": torch.ones(2, 6, dtype=torch.bool),
        },
    ),
    "sana": (
        "SanaTransformer2DModel",
        {
            "patch_size": 1,
            "in_channels": 4,
            "out_channels": 4,
            "num_layers": 1,
            "num_attention_heads": 2,
            "attention_head_dim": 4,
            "num_cross_attention_heads": 2,
            "cross_attention_head_dim": 4,
            "cross_attention_dim": 8,
            "caption_channels": 8,
            "sample_size": 16,
        },
        lambda g: {
            "hidden_states": _n(g, 2, 4, 16, 16),
            "encoder_hidden_states": _n(g, 2, 5, 8),
            "timestep": _t(10, 20),
        },
    ),
    "qwenimage": (
        "QwenImageTransformer2DModel",
        {
            "patch_size": 2,
            "in_channels": 16,
            "out_channels": 4,
            "num_layers": 2,
            "attention_head_dim": 16,
            "num_attention_heads": 3,
            "joint_attention_dim": 16,
            "axes_dims_rope": (8, 4, 4),
        },
        lambda g: {
            "hidden_states": _n(g, 1, 16, 16),
            "encoder_hidden_states": _n(g, 1, 7, 16),
            "encoder_hidden_states_mask": torch.ones(1, 7),
            "timestep": _t(0.5),
            "img_shapes": [(1, 4, 4)],
        },
    ),
    "wan": (
        "WanTransformer3DModel",
        {
            "patch_size": (1, 2, 2),
            "num_attention_heads": 2,
            "attention_head_dim": 12,
            "in_channels": 4,
            "out_channels": 4,
            "text_dim": 16,
            "freq_dim": 256,
            "ffn_dim": 32,
            "num_layers": 2,
            "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads",
            "rope_max_seq_len": 32,
        },
        lambda g: {
            "hidden_states": _n(g, 1, 4, 2, 16, 16),
            "encoder_hidden_states": _n(g, 1, 12, 16),
            "timestep": _t(10).long(),
        },
    ),
    "ltx-video": (
        "LTXVideoTransformer3DModel",
        {
            "in_channels": 4,
            "out_channels": 4,
            "num_attention_heads": 2,
            "attention_head_dim": 8,
            "cross_attention_dim": 16,
            "num_layers": 1,
            "caption_channels": 16,
        },
        lambda g: {
            "hidden_states": _n(g, 1, 32, 4),
            "encoder_hidden_states": _n(g, 1, 6, 16),
            "timestep": _t(10).long(),
            "encoder_attention_mask": torch.ones(1, 6),
            "num_frames": 2,
            "height": 4,
            "width": 4,
        },
    ),
    "cogvideox": (
        "CogVideoXTransformer3DModel",
        {
            "num_attention_heads": 2,
            "attention_head_dim": 8,
            "in_channels": 4,
            "out_channels": 4,
            "time_embed_dim": 2,
            "text_embed_dim": 8,
            "num_layers": 1,
            "sample_width": 8,
            "sample_height": 8,
            "sample_frames": 8,
            "patch_size": 2,
            "temporal_compression_ratio": 4,
            "max_text_seq_length": 8,
        },
        lambda g: {
            "hidden_states": _n(g, 2, 1, 4, 8, 8),
            "encoder_hidden_states": _n(g, 2, 8, 8),
            "timestep": _t(10, 20).long(),
        },
    ),
    "hidream": (
        "HiDreamImageTransformer2DModel",
        {
            "patch_size": 2,
            "in_channels": 4,
            "out_channels": 4,
            "num_layers": 1,
            "num_single_layers": 1,
            "attention_head_dim": 8,
            "num_attention_heads": 4,
            "caption_channels": [8, 4],
            "text_emb_dim": 8,
            "num_routed_experts": 4,
            "num_activated_experts": 2,
            "axes_dims_rope": (4, 2, 2),
            "max_resolution": (32, 32),
            "llama_layers": (0, 1),
        },
        lambda g: {
            "hidden_states": _n(g, 2, 4, 16, 16),
            "encoder_hidden_states_t5": _n(g, 2, 8, 8),
            "encoder_hidden_states_llama3": _n(g, 2, 2, 8, 4),
            "pooled_embeds": _n(g, 2, 8),
            "timesteps": _t(10, 20).long(),
        },
    ),
    "hunyuan-video": (
        "HunyuanVideoTransformer3DModel",
        {
            "in_channels": 4,
            "out_channels": 4,
            "num_attention_heads": 2,
            "attention_head_dim": 10,
            "num_layers": 1,
            "num_single_layers": 1,
            "num_refiner_layers": 1,
            "patch_size": 1,
            "patch_size_t": 1,
            "guidance_embeds": True,
            "text_embed_dim": 16,
            "pooled_projection_dim": 8,
            "rope_axes_dim": (2, 4, 4),
        },
        lambda g: {
            "hidden_states": _n(g, 1, 4, 1, 8, 8),
            "timestep": _t(10).long(),
            "encoder_hidden_states": _n(g, 1, 6, 16),
            "encoder_attention_mask": torch.ones(1, 6),
            "pooled_projections": _n(g, 1, 8),
            "guidance": _t(3.5),
        },
    ),
    "mochi": (
        "MochiTransformer3DModel",
        {
            "patch_size": 2,
            "num_attention_heads": 2,
            "attention_head_dim": 8,
            "num_layers": 2,
            "pooled_projection_dim": 16,
            "in_channels": 4,
            "text_embed_dim": 16,
            "time_embed_dim": 4,
            "max_sequence_length": 16,
        },
        lambda g: {
            "hidden_states": _n(g, 1, 4, 2, 8, 8),
            "encoder_hidden_states": _n(g, 1, 6, 16),
            "timestep": _t(10).long(),
            "encoder_attention_mask": torch.ones(1, 6),
        },
    ),
    "cogview4": (
        "CogView4Transformer2DModel",
        {
            "patch_size": 2,
            "in_channels": 4,
            "num_layers": 2,
            "attention_head_dim": 4,
            "num_attention_heads": 4,
            "out_channels": 4,
            "text_embed_dim": 8,
            "time_embed_dim": 8,
            "condition_dim": 4,
        },
        lambda g: {
            "hidden_states": _n(g, 2, 4, 8, 8),
            "encoder_hidden_states": _n(g, 2, 6, 8),
            "timestep": _t(10, 20).long(),
            "original_size": torch.tensor([[32, 32]] * 2),
            "target_size": torch.tensor([[32, 32]] * 2),
            "crop_coords": torch.tensor([[0, 0]] * 2),
        },
    ),
    "wan-vae": (
        "AutoencoderKLWan",
        {
            "base_dim": 8,
            "z_dim": 4,
            "dim_mult": [1, 1, 1, 1],
            "num_res_blocks": 1,
            "temperal_downsample": [False, True, True],
        },
        lambda g: {"sample": _n(g, 1, 3, 5, 16, 16)},
    ),
    "svd-unet": (
        "UNetSpatioTemporalConditionModel",
        {
            "block_out_channels": (32, 64),
            "down_block_types": ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
            "up_block_types": ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
            "cross_attention_dim": 32,
            "num_attention_heads": 8,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 2,
            "sample_size": 16,
            "projection_class_embeddings_input_dim": 96,
            "addition_time_embed_dim": 32,
        },
        lambda g: {
            "sample": _n(g, 1, 2, 4, 16, 16),
            "timestep": _t(10).long(),
            "encoder_hidden_states": _n(g, 1, 1, 32),
            "added_time_ids": _n(g, 1, 3),
        },
    ),
    "stable-audio": (
        "StableAudioDiTModel",
        {
            "sample_size": 8,
            "in_channels": 4,
            "num_layers": 2,
            "attention_head_dim": 4,
            "num_attention_heads": 2,
            "num_key_value_attention_heads": 2,
            "out_channels": 4,
            "cross_attention_dim": 4,
            "time_proj_dim": 8,
            "global_states_input_dim": 8,
            "cross_attention_input_dim": 4,
        },
        lambda g: {
            "hidden_states": _n(g, 2, 4, 8),
            "timestep": _t(10, 20).long(),
            "encoder_hidden_states": _n(g, 2, 6, 4),
            "global_hidden_states": _n(g, 2, 1, 8),
        },
    ),
}


def build(name: str) -> Any:
    """The model of that name, built from its config (where torch's default device is)."""
    import diffusers

    class_name, config, _ = MODELS[name]
    return getattr(diffusers, class_name)(**config)


def batch(name: str, seed: int) -> dict[str, Any]:
    """One step's batch for the model of that name, drawn from ``seed``."""
    return MODELS[name][2](torch.Generator().manual_seed(seed))


def floating(outputs: Any) -> list[torch.Tensor]:
    """Every floating tensor of a model's outputs (a ``BaseOutput``, a tuple, a tensor)."""
    if hasattr(outputs, "to_tuple"):
        outputs = outputs.to_tuple()
    if isinstance(outputs, torch.Tensor):
        return [outputs] if outputs.is_floating_point() else []
    if isinstance(outputs, (tuple, list)):
        return [t for item in outputs for t in floating(item)]
    return []


def loss(outputs: Any) -> torch.Tensor:
    """The mean square of every floating output: a step that trains everything forward gave."""
    return sum((t.float().pow(2).mean() for t in floating(outputs)), torch.zeros(()))
