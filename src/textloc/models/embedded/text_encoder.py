"""Text encoder of the embedded model: a small transformer plus fixed per-token and per-slot codes.

Why fixed codes: the pilot (shared/EMBEDDED_PILOT.md) found that a tiny text encoder trained from scratch
blurs *which* character sits *where*; adding a frozen random code per token and a fixed code per character
position to the encoder's output made the U-Net spell within minutes. We go one step further and index the
position code by the character's offset from the centre of its quoted string, ``k - (n - 1) / 2``, which is
exactly where the renderer puts it (see ``renderer.py``): cross-attention then only has to match a pixel's
x coordinate to an offset code, the same rule for every slot and every string length.

The codes are persistent buffers, so they ship inside the safetensors weights and are never re-derived.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from transformers.modeling_outputs import BaseModelOutput


class EmbeddedTextEncoder(ModelMixin, ConfigMixin):
    """Transformer text encoder; ``last_hidden_state`` feeds the U-Net's cross-attention."""

    @register_to_config
    def __init__(
        self,
        vocab_size: int = 64,
        hidden_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        max_position_embeddings: int = 32,
        char_token_start: int = 5,
        char_token_end: int = 33,
        max_chars: int = 6,
        code_seed: int = 1234,
    ) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, hidden_size)
        self.position_embedding = nn.Embedding(max_position_embeddings, hidden_size)
        layer = nn.TransformerEncoderLayer(
            hidden_size, num_heads, 4 * hidden_size, dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.final_layer_norm = nn.LayerNorm(hidden_size)
        generator = torch.Generator().manual_seed(code_seed)
        self.register_buffer("token_codes", torch.randn(vocab_size, hidden_size, generator=generator))
        self.register_buffer("slot_codes", torch.randn(2 * max_chars - 1, hidden_size, generator=generator))

    def slot_index(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each token: index into ``slot_codes`` and whether it is a quoted character.

        A run of consecutive character tokens is one quoted string; its k-th character of n gets the
        half-cell offset ``2k - (n - 1)``, shifted to be non-negative.
        """
        cfg = self.config
        is_char = (input_ids >= cfg.char_token_start) & (input_ids < cfg.char_token_end)
        index = torch.zeros_like(input_ids)
        for row in range(input_ids.shape[0]):
            flags = is_char[row].tolist()
            col = 0
            while col < len(flags):
                if not flags[col]:
                    col += 1
                    continue
                end = col
                while end < len(flags) and flags[end]:
                    end += 1
                n = min(end - col, cfg.max_chars)
                for k in range(end - col):
                    offset = 2 * min(k, n - 1) - (n - 1)
                    index[row, col + k] = offset + cfg.max_chars - 1
                col = end
        return index, is_char

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, return_dict: bool = True
    ) -> BaseModelOutput | tuple[torch.Tensor]:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.token_embedding(input_ids) + self.position_embedding(positions)[None]
        padding = None if attention_mask is None else attention_mask == 0
        hidden = self.final_layer_norm(self.encoder(hidden, src_key_padding_mask=padding))
        slot, is_char = self.slot_index(input_ids)
        codes = self.token_codes[input_ids] + self.slot_codes[slot] * is_char[..., None].to(hidden.dtype)
        hidden = hidden + codes
        if not return_dict:
            return (hidden,)
        return BaseModelOutput(last_hidden_state=hidden)
