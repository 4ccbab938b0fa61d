"""Looking inside: each block's feature maps with their true shapes, and Grad-CAM pointing at the evidence."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from deconv import explain
from deconv.config import ModelConfig
from deconv.model import build_model

RED, BLUE = (230, 40, 40), (40, 40, 230)  # the colour of the patch is the class: red 0, blue 1


def noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Grey noise images, float (n, 32, 32, 3)."""
    return rng.normal(128, 20, (n, 32, 32, 3))


def paint(image: np.ndarray, quadrant: int, colour: tuple[int, int, int], rng: np.random.Generator) -> None:
    """An 8x8 patch somewhere inside one quadrant (0 top left, 1 top right, 2 bottom left, 3 bottom right)."""
    top, left = 16 * (quadrant // 2) + rng.integers(2, 7), 16 * (quadrant % 2) + rng.integers(2, 7)
    image[top:top + 8, left:left + 8] = colour


def scenes(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Images with a red or a blue patch in a random quadrant, and their class."""
    x, y = noise(n, rng), rng.integers(0, 2, n)
    for image, label, quadrant in zip(x, y, rng.integers(0, 4, n)):
        paint(image, quadrant, (RED, BLUE)[label], rng)
    return np.clip(x, 0, 255).astype(np.uint8), y


def in_quadrant(heat: np.ndarray, quadrant: int) -> float:
    """The total of a (32, 32) map inside one quadrant."""
    top, left = 16 * (quadrant // 2), 16 * (quadrant % 2)
    return float(heat[top:top + 16, left:left + 16].sum())


@pytest.fixture(scope="module")
def patch_model() -> keras.Model:
    """A small network trained for a few seconds until the colour of the patch decides the class."""
    keras.utils.set_random_seed(0)
    x, y = scenes(384, np.random.default_rng(0))
    model = build_model(ModelConfig(widths=(8, 16)))
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return model


def test_feature_maps_of_the_default_network_have_each_blocks_shape() -> None:
    config = ModelConfig()
    maps = explain.feature_maps(explain.probe(build_model(config)), scenes(1, np.random.default_rng(1))[0][0])
    assert [m.label for m in maps] == ["block1_conv 16x16x32", "block2_conv 8x8x64", "block3_conv 4x4x128",
                                       "up1_deconv 8x8x64", "up1_conv 8x8x64"]  # the decoder maps 4x4 back up
    assert maps[1].summary == "16 most active of 64 channels"
    pairs = ModelConfig(block_deconvs=True, up_blocks=0, downsample="stride")  # the article's conv-deconv pairs
    maps = explain.feature_maps(explain.probe(build_model(pairs)), scenes(1, np.random.default_rng(1))[0][0])
    sizes, widths = pairs.feature_sizes(), [w for w in pairs.widths for _ in range(2)]
    assert [m.label for m in maps] == [f"block{i // 2 + 1}_{('conv', 'deconv')[i % 2]} {s}x{s}x{w}"
                                       for i, (s, w) in enumerate(zip(sizes, widths))]
    for m in maps:
        assert m.tiles.shape == (explain.CHANNELS, m.shape[0], m.shape[1]) and len(set(m.channels)) == explain.CHANNELS
        assert m.tiles.min() >= 0 and m.tiles.max() == 1 and max(m.channels) < m.shape[2]


def test_a_stride_2_deconv_maps_its_features_up_to_a_larger_map() -> None:
    config = ModelConfig(widths=(8, 16), deconv_stride=2, block_deconvs=True, up_blocks=0)
    maps = explain.feature_maps(explain.probe(build_model(config)), scenes(1, np.random.default_rng(2))[0][0])
    assert [(m.name, m.shape) for m in maps] == [("block1_conv", (16, 16, 8)), ("block1_deconv", (32, 32, 8)),
                                                 ("block2_conv", (16, 16, 16)), ("block2_deconv", (32, 32, 16))]
    assert [m.tiles.shape for m in maps] == [(8, 16, 16), (8, 32, 32), (16, 16, 16), (16, 32, 32)]


def test_the_most_active_channels_are_drawn_first_averaged_down_and_scaled() -> None:
    activations = np.zeros((256, 256, 20), np.float32)  # the article's largest map
    activations[..., :19] = np.arange(1, 20)  # channel c is c + 1 everywhere; channel 19 is dead
    activations[:4, :4, 3] = 1e5  # a bright corner makes channel 3 the most active; its 4x4 becomes one drawn pixel
    channels, tiles = explain.strongest(activations)
    assert channels[:2] == [3, 18] and channels == [3, *range(18, 3, -1)]
    assert tiles.shape == (16, 64, 64) and tiles[0, 0, 0] == 1.0 and tiles[0, 1, 1] == pytest.approx(4 / 1e5)
    assert (tiles[1:] == 1.0).all()
    block = explain.BlockMaps("block3_deconv", (256, 256, 20), channels, tiles)
    assert block.summary == "16 most active of 20 channels, drawn at 64x64"
    assert not np.isnan(explain.strongest(activations[..., 19:])[1]).any()  # a dead channel draws as zeros


def test_the_probe_scores_are_the_models_logits() -> None:
    model = build_model(ModelConfig(widths=(8,), head="flatten"))
    x = scenes(1, np.random.default_rng(3))[0]
    logits = np.asarray(explain.probe(model)(x.astype(np.float32))[explain.LOGITS])
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(), model.predict_on_batch(x.astype(np.float32)),
                               rtol=1e-4, atol=1e-6)


def test_grad_cam_and_saliency_are_32x32_maps_in_0_1_that_vary(patch_model: keras.Model) -> None:
    image = scenes(1, np.random.default_rng(4))[0][0]
    found = explain.evidence(explain.probe(patch_model), image, 1)
    for heat in (found.grad_cam, found.saliency):
        assert heat.shape == (32, 32) and heat.dtype == np.float32
        assert heat.min() >= 0 and heat.max() == 1 and heat.std() > 0.05


def test_grad_cam_of_each_class_points_at_that_class_patch(patch_model: keras.Model) -> None:
    rng = np.random.default_rng(5)
    x, red = noise(20, rng), rng.integers(0, 4, 20)
    blue = (red + rng.integers(1, 4, 20)) % 4  # another quadrant
    for image, r, b in zip(x, red, blue):
        paint(image, r, RED, rng)
        paint(image, b, BLUE, rng)
    probe, found = explain.probe(patch_model), []
    for image, r, b in zip(np.clip(x, 0, 255).astype(np.uint8), red, blue):
        for_red, for_blue = (explain.evidence(probe, image, c).grad_cam for c in (0, 1))
        found.append(in_quadrant(for_red, r) > in_quadrant(for_red, b) and
                     in_quadrant(for_blue, b) > in_quadrant(for_blue, r))
    assert np.mean(found) >= 0.9, f"Grad-CAM found each class's own patch in only {np.mean(found):.0%} of the images"
