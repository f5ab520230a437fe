"""Architecture presets: one registry of named ViT-FIQA sizes.

`vit-fiqa-s` is the released model (112x112 input, 9x9 patches, 144 patch tokens).
`vit-fiqa-micro` keeps that geometry, as the official test vectors do. `vit-fiqa-cpu`, the
demo's, cuts 8x8 patches (196 tokens) that line up with JPEG's 8x8 blocks: a model this
small, trained for minutes, learns to see blocking on real faces only then (docs/benchmarks.md,
"8x8 patches and copies weighted to JPEG"). Every tool reads the geometry from an artifact's
config, so presets mix freely.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

Mode = Literal["token", "crfiqa", "full"]
MODES: tuple[str, ...] = ("token", "crfiqa", "full")


@dataclass(frozen=True)
class ViTFIQAConfig:
    """Every number that determines the network's parameters and forward pass."""

    img_size: int = 112
    patch_size: int = 9
    in_chans: int = 3
    embed_dim: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    fr_dim: int = 512
    drop_path_rate: float = 0.1
    mask_ratio: float = 0.1
    mode: Mode = "token"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")

    @property
    def grid(self) -> int:
        # Conv stride floors: 112 // 9 = 12, the last 4 rows/cols are never seen.
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def has_quality_token(self) -> bool:
        return self.mode != "crfiqa"

    @property
    def num_tokens(self) -> int:
        return self.num_patches + int(self.has_quality_token)

    @property
    def fr_tokens(self) -> int:
        """Tokens flattened into the FR head: patches only, or all tokens in `full` mode."""
        return self.num_tokens if self.mode == "full" else self.num_patches

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ViTFIQAConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown architecture fields: {', '.join(unknown)}")
        return cls(**data)


PRESETS: dict[str, ViTFIQAConfig] = {
    # The published ViT-FIQA (ViT-S backbone of insightface arcface_torch plus the token).
    "vit-fiqa-s": ViTFIQAConfig(),
    # CPU preset for the demo and integration tests (docs/benchmarks.md has its speed).
    "vit-fiqa-cpu": ViTFIQAConfig(
        patch_size=8, embed_dim=96, depth=4, num_heads=4, fr_dim=128, drop_path_rate=0.05
    ),
    # The size of the official numeric test vectors; for unit tests.
    "vit-fiqa-micro": ViTFIQAConfig(
        embed_dim=32, depth=2, num_heads=2, fr_dim=32, drop_path_rate=0.0
    ),
}


def get_preset(name: str, **overrides) -> ViTFIQAConfig:
    """The preset `name`, with any field replaced by `overrides` (e.g. mode="crfiqa")."""
    try:
        config = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}") from None
    return replace(config, **overrides) if overrides else config
