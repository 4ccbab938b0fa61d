"""Looking inside: each block's feature maps with their true shapes, and Grad-CAM pointing at the evidence."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from deconv import explain
from deconv.computations import Abandoned
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


def colour_detector(pool: bool = True) -> keras.Model:
    """A network whose answer is known: block1's channel 0 sees red and channel 1 blue, each at its 3x3 window's
    centre pixel only; 2x2 max pooling; block2's 1x1 conv copies both channels."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = keras.layers.Conv2D(2, 3, padding="same", name="block1_conv")(x)
    x = keras.layers.ReLU(name="block1_conv_relu")(x)
    if pool:
        x = keras.layers.MaxPooling2D(2, name="block1_conv_pool")(x)
    x = keras.layers.Conv2D(2, 1, name="block2_conv")(x)
    x = keras.layers.ReLU(name="block2_conv_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="classifier")(x))
    kernel = np.zeros((3, 3, 3, 2), np.float32)
    kernel[1, 1, 0, 0] = kernel[1, 1, 2, 1] = 1.0  # red at the centre for channel 0, blue for channel 1
    model.get_layer("block1_conv").set_weights([kernel, np.full(2, -0.1, np.float32)])  # a dim pixel stays silent
    model.get_layer("block2_conv").set_weights([np.eye(2, dtype=np.float32)[None, None], np.zeros(2, np.float32)])
    return model


def dots(*where: tuple[int, int, tuple[int, int, int]]) -> np.ndarray:
    """A black image with single coloured pixels at (row, column)."""
    image = np.zeros((32, 32, 3), np.uint8)
    for row, col, colour in where:
        image[row, col] = colour
    return image


def test_the_deconvnet_projects_the_strongest_activation_back_to_the_pixel_that_caused_it() -> None:
    image = dots((10, 21, (255, 0, 0)), (25, 4, (120, 0, 0)), (3, 3, (0, 0, 200)))  # bright red, dim red, blue
    found = explain.project(colour_detector(), image, "block2_conv")
    assert (found.channel, found.position) == (0, (5, 10))  # the bright red pixel, after 2x2 pooling
    assert found.activation == pytest.approx(0.9, abs=1e-5) and found.feature_map.shape == (16, 16)
    for picture in (found.deconvnet, found.guided):
        moved = np.argwhere(np.abs(picture - 0.5).max(-1) > 1e-6)
        assert moved.tolist() == [[10, 21]]  # only that pixel came back: max pooling's switches routed it there
        assert picture[10, 21, 0] == 1.0 and picture[10, 21, 1:].tolist() == [0.5, 0.5]  # through the red weight
    blue = explain.project(colour_detector(), image, "block2_conv", channel=1)
    assert blue.position == (1, 1) and np.abs(blue.deconvnet - 0.5).max(-1).argmax() == 3 * 32 + 3
    with pytest.raises(ValueError, match="block2_conv has channels 0 to 1, not 2"):
        explain.project(colour_detector(), image, "block2_conv", channel=2)


def test_the_deconvnet_rule_differs_from_guided_backpropagation_where_the_forward_pass_was_negative() -> None:
    x = np.array([-1.0, 2.0], np.float32)
    dy = np.array([3.0, -4.0], np.float32)
    assert explain.RULES["deconvnet"](x, dy).numpy().tolist() == [3.0, 0.0]  # rectifies the signal, ignores x
    assert explain.RULES["guided"](x, dy).numpy().tolist() == [0.0, 0.0]  # and where x was negative too
    model = build_model(ModelConfig(widths=(8, 16)))
    image = scenes(1, np.random.default_rng(6))[0][0]
    found = explain.project(model, image, "up1_conv")
    assert found.deconvnet.shape == found.guided.shape == (32, 32, 3)
    assert 0 <= found.deconvnet.min() and found.deconvnet.max() <= 1
    assert not np.allclose(found.deconvnet, found.guided)


def test_top_patches_are_the_images_that_excite_each_channel_most_cropped_to_what_it_sees() -> None:
    rng = np.random.default_rng(7)
    images = rng.integers(0, 60, (40, 32, 32, 3)).astype(np.uint8)  # dark noise: nothing clears the bias much
    red, blue = rng.permutation(40)[:20].reshape(2, 10)
    for i, strength in zip(red, np.linspace(250, 160, 10)):
        row, col = rng.integers(2, 28, 2)
        images[i, row - 1:row + 2, col - 1:col + 2] = (strength, 0, 0)  # a red 3x3 square, brightest first
    for i in blue:
        images[i, 16, 16] = (0, 0, 255)
    found = explain.top_patches(colour_detector(pool=False), images, "block1_conv", channels=2, size=6)
    red_row = found.channels.index(0)
    assert found.images[red_row].tolist() == red[:explain.PATCHES].tolist()  # the nine brightest squares, in order
    assert found.patches.shape == (2, explain.PATCHES, 6, 6, 3) and found.searched == 40
    crops = found.patches[red_row].astype(float)
    assert (crops[..., 0] > 150).all() and (crops[..., 2] == 0).all()  # each crop is the unit's 1-pixel field: red
    assert set(found.images[found.channels.index(1)].tolist()) < set(blue.tolist())


def test_a_probe_is_made_once_per_model_and_runs_only_as_far_as_the_block_asked_for() -> None:
    model = build_model(ModelConfig(widths=(8, 16)))
    probe = explain.probe(model)
    assert explain.probe(model) is probe and explain.backward_probes(model) is explain.backward_probes(model)
    part = explain.through(probe, "block1_conv")
    assert explain.through(probe, "block1_conv") is part
    assert not {"block2_conv", "up1_deconv", "classifier"} & {layer.name for layer in part.layers}
    x = scenes(2, np.random.default_rng(9))[0].astype(np.float32)
    np.testing.assert_allclose(part(x), probe(x)["block1_conv"], rtol=1e-5)


def test_top_patches_tell_their_progress_step_by_step_and_stop_when_it_raises() -> None:
    images = np.random.default_rng(10).integers(0, 255, (30, 32, 32, 3)).astype(np.uint8)
    told: list[float] = []
    explain.top_patches(colour_detector(pool=False), images, "block1_conv", channels=2, batch_size=10,
                        progress=told.append)
    assert told == pytest.approx([1 / 5, 2 / 5, 3 / 5, 4 / 5, 1.0])  # three batches searched, two channels cropped

    def stop(fraction: float) -> None:
        raise Abandoned  # what the progress of a computation nobody waits for raises

    with pytest.raises(Abandoned):
        explain.top_patches(colour_detector(pool=False), images, "block1_conv", channels=2, progress=stop)


def test_the_checkerboard_score_is_zero_for_an_even_map_and_large_for_a_checkerboard() -> None:
    even = np.ones((8, 8, 4))
    board = np.zeros((8, 8, 4))
    board[::2, ::2] = 1.0  # one phase of four lit
    assert explain.checkerboard(even) == 0.0 and explain.checkerboard(np.zeros((8, 8, 4))) == 0.0
    assert explain.checkerboard(board) == pytest.approx(4.0)  # spread 1 over a mean of 1/4
    images = scenes(8, np.random.default_rng(8))[0]
    scores = {}
    for upsample in ("transpose", "resize"):
        keras.utils.set_random_seed(0)
        probe = explain.probe(build_model(ModelConfig(upsample=upsample, deconv_kernel=3)))
        assert explain.upsampled_blocks(probe) == ["up1_deconv"]
        scores[upsample] = np.median([explain.checkerboards(probe, image)["up1_deconv"] for image in images])
    assert scores["transpose"] > 2 * scores["resize"]  # the stride-2 3x3 transposed conv's uneven overlap shows
