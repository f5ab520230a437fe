import pytest
import torch

from pipeline.augment import AUGMENTATIONS, augment, check_augmentations, random_flip


def batch(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_every_augmentation_keeps_shape_and_range():
    x = batch()
    for name in AUGMENTATIONS:
        y = augment(x, [name], torch.Generator().manual_seed(0))
        assert y.shape == x.shape and y.dtype == x.dtype
        assert y.min() >= -1.0001 and y.max() <= 1.0001, name


def test_same_generator_state_gives_the_same_batch():
    x = batch()
    a = augment(x, AUGMENTATIONS, torch.Generator().manual_seed(3))
    b = augment(x, AUGMENTATIONS, torch.Generator().manual_seed(3))
    c = augment(x, AUGMENTATIONS, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_mirrors_some_images_exactly():
    x = batch(64)
    y = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(y[i], x[i].flip(2)) for i in range(64)]
    kept = [torch.equal(y[i], x[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 16 < sum(flipped) < 48


def test_no_augmentation_is_identity_and_unknown_names_are_refused():
    x = batch()
    assert torch.equal(augment(x, [], torch.Generator()), x)
    with pytest.raises(ValueError, match="unknown augmentation 'rotate'"):
        check_augmentations(["flip", "rotate"])
