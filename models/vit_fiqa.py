"""ViT-FIQA: a ViT face-recognition backbone with a learnable quality token.

The module tree mirrors the released model so that its `state_dict()` loads strictly:
`qs_token`, `pos_embed`, `mask_token`, `patch_embed`, `blocks`, `norm`, `feature` (FR head) and
`head_qs` (quality head). Blocks are timm's pre-norm transformer blocks with a ReLU6 MLP.
"""

from __future__ import annotations

import torch
from timm.layers import PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from models.presets import ViTFIQAConfig, get_preset

BN_EPS = 2e-5


class ViTFIQA(nn.Module):
    """`forward(x) -> (embedding, quality)`.

    x: float (B, 3, H, W), RGB normalised to [-1, 1]. embedding: (B, fr_dim), not normalised.
    quality: (B,), the raw quality-head output (unbounded; higher is better).
    """

    def __init__(self, config: ViTFIQAConfig):
        super().__init__()
        self.config = c = config
        if c.has_quality_token:
            self.qs_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_tokens, c.embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.patch_embed = PatchEmbed(
            img_size=c.img_size,
            patch_size=c.patch_size,
            in_chans=c.in_chans,
            embed_dim=c.embed_dim,
        )
        drop_path = torch.linspace(0, c.drop_path_rate, c.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(
                dim=c.embed_dim,
                num_heads=c.num_heads,
                mlp_ratio=c.mlp_ratio,
                qkv_bias=False,
                drop_path=dp,
                act_layer=nn.ReLU6,
                norm_layer=nn.LayerNorm,
            )
            for dp in drop_path
        )
        self.norm = nn.LayerNorm(c.embed_dim)
        self.feature = nn.Sequential(
            nn.Linear(c.fr_tokens * c.embed_dim, c.fr_dim, bias=False),
            nn.BatchNorm1d(c.fr_dim, eps=BN_EPS),
            nn.Linear(c.fr_dim, c.fr_dim, bias=False),
            nn.BatchNorm1d(c.fr_dim, eps=BN_EPS),
        )
        quality_in = c.embed_dim if c.mode == "token" else c.fr_dim
        self.head_qs = nn.Sequential(
            nn.BatchNorm1d(quality_in, eps=BN_EPS),
            nn.Linear(quality_in, 1, bias=False),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        if self.config.has_quality_token:
            trunc_normal_(self.qs_token, std=0.02)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "qs_token"} if self.config.has_quality_token else {"pos_embed"}

    def random_masking(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep a random int(L * (1 - mask_ratio)) tokens per sample (any token, the quality
        token included). Returns the kept tokens and the permutation that restores order."""
        batch, length, dim = x.shape
        keep = int(length * (1 - self.config.mask_ratio))
        shuffle = torch.rand(batch, length, device=x.device).argsort(dim=1)
        restore = shuffle.argsort(dim=1)
        kept = torch.gather(x, 1, shuffle[:, :keep, None].expand(-1, -1, dim))
        return kept, restore

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm: (B, num_tokens, embed_dim), quality token first."""
        x = self.patch_embed(x)
        if self.config.has_quality_token:
            x = torch.cat([self.qs_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        masking = self.training and self.config.mask_ratio > 0
        if masking:
            length = x.shape[1]
            x, restore = self.random_masking(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if masking:
            # Refill dropped slots after the norm, then undo the shuffle.
            fill = self.mask_token.expand(x.shape[0], length - x.shape[1], -1).to(x.dtype)
            x = torch.cat([x, fill], dim=1)
            x = torch.gather(x, 1, restore[:, :, None].expand(-1, -1, x.shape[2]))
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.forward_tokens(x)
        fr_tokens = tokens[:, 1:] if self.config.mode == "token" else tokens
        embedding = self.feature(fr_tokens.flatten(1))
        quality_in = tokens[:, 0] if self.config.mode == "token" else embedding
        quality = self.head_qs(quality_in).squeeze(1)
        return embedding, quality


def create_model(preset: str = "vit-fiqa-s", **overrides) -> ViTFIQA:
    """A freshly initialised model: `create_model("vit-fiqa-cpu", mode="crfiqa")`."""
    return ViTFIQA(get_preset(preset, **overrides))
