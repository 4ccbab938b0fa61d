"""describe(): hand-computed costs agree with the Keras model build_model makes."""

from __future__ import annotations

import numpy as np
import pytest

from deconv.config import PRESETS, ModelConfig
from deconv import cost
from deconv.cost import describe
from deconv.model import block_outputs, build_model

CONFIGS = [PRESETS["default"], PRESETS["article"], ModelConfig(widths=(8,), head="flatten"),
           ModelConfig(widths=(16, 24), conv_kernel=5, conv_stride=1, deconv_kernel=3, deconv_stride=2, pool_size=3),
           ModelConfig(widths=(8, 8, 8, 8), conv_stride=2, deconv_stride=1, conv_kernel=1, deconv_kernel=7),
           ModelConfig(widths=(8, 16, 24), block_deconvs=True, up_blocks=3, deconv_kernel=4, pool_size=4),
           ModelConfig(widths=(8, 16), downsample="stride", skips=False, head="flatten"),
           ModelConfig(upsample="resize"),
           ModelConfig(widths=(8, 16, 24), block_deconvs=True, deconv_stride=2, up_blocks=2, deconv_kernel=3,
                       upsample="resize", pool_size=4)]


def test_article_preset_has_the_articles_parameter_count() -> None:
    assert describe(PRESETS["article"]).params == 84_325_418
    assert build_model(PRESETS["article"]).count_params() == 84_325_418


def test_article_flops_by_hand() -> None:
    macs = (32 * 32 * 3 * 3 * 3 * 32 + 32 * 32 * 4 * 4 * 32 * 32  # conv 32 at 32x32, deconv 32 from 32x32
            + 64 * 64 * 3 * 3 * 32 * 64 + 64 * 64 * 4 * 4 * 64 * 64
            + 128 * 128 * 3 * 3 * 64 * 128 + 128 * 128 * 4 * 4 * 128 * 128
            + 256 * 256 * 128 * 10)  # dense
    assert describe(PRESETS["article"]).flops == 2 * macs
    cost = describe(PRESETS["article"])
    assert cost.layers[-2].output_shape == (256 * 256 * 128,)
    assert cost.activation_bytes > 100e6  # the 256x256x128 maps dominate


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c.widths)) + c.head + c.upsample)
def test_describe_matches_keras_layer_by_layer(config: ModelConfig) -> None:
    model = build_model(config)
    cost = describe(config)
    keras_layers = [layer for layer in model.layers if layer.__class__.__name__ != "InputLayer"]
    assert [layer.name for layer in keras_layers] == [c.name for c in cost.layers]
    for layer, c in zip(keras_layers, cost.layers):
        assert tuple(layer.output.shape[1:]) == c.output_shape, layer.name
        assert layer.count_params() == c.params, layer.name
        assert layer.__class__.__name__ == c.kind
    assert cost.params == model.count_params()


@pytest.mark.parametrize("pool_size", range(1, 9))
def test_adaptive_head_trains_and_predicts_at_every_allowed_size(pool_size: int) -> None:
    config = ModelConfig(widths=(8,), conv_stride=1, deconv_stride=1, pool_size=pool_size)
    model = build_model(config)
    model.compile("adam", "categorical_crossentropy")
    x = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3)).astype("float32")
    y = np.eye(10)[np.arange(8)]
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    probs = model.predict(x, verbose=0)
    assert probs.shape == (8, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_block_outputs_show_deconvs_mapping_features_up() -> None:
    model = build_model(PRESETS["article"].replace(widths=(8, 8)))
    maps = block_outputs(model)(np.zeros((1, 32, 32, 3), "float32"))
    assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == {
        "block1_conv": (32, 32, 8), "block1_deconv": (64, 64, 8), "block2_conv": (64, 64, 8), "block2_deconv": (128, 128, 8)}


def test_estimated_epoch_time_scales_with_flops() -> None:
    small, article = describe(PRESETS["default"]), describe(PRESETS["article"])
    assert article.train_seconds_per_epoch(10_000) > 100 * small.train_seconds_per_epoch(10_000)
    assert article.train_seconds_per_epoch(10_000) > 3600  # hours, as measured


def test_memory_estimate_matches_what_the_article_network_was_measured_to_take() -> None:
    from deconv.config import PRESETS, TrainConfig

    article, default = describe(PRESETS["article"]), describe(PRESETS["default"])
    few = TrainConfig(train_size=100, val_size=100, epochs=1)
    gib = 2**30
    # measured peaks (cost.py): 5.1 GiB at batch 8, about 16 GiB at batch 64
    assert 4 * gib < article.train_memory_bytes(few.replace(batch_size=8)) < 6.5 * gib
    assert 13 * gib < article.train_memory_bytes(few.replace(batch_size=64)) < 20 * gib
    assert article.train_memory_bytes(TrainConfig(batch_size=1024)) > 100 * gib  # refused on any ordinary machine
    assert default.train_memory_bytes(TrainConfig()) < 2 * gib
    assert article.eval_batch() < 8 <= 256 == default.eval_batch()  # checking the article's network goes a few at a time


# The largest network ModelConfig allows: 1.15 TFLOPs per image (issue #24 measured the pages with it).
LARGEST = ModelConfig(widths=(256,) * 4, conv_kernel=7, deconv_kernel=7, conv_stride=1, deconv_stride=1,
                      upsample="resize", block_deconvs=True, up_blocks=3, head="flatten", pool_size=1)


def test_top_patches_search_fewer_images_for_a_costly_network_within_the_budget() -> None:
    assert cost.patch_images(PRESETS["default"], 10_000) == cost.PATCH_IMAGES  # 25 MFLOPs: all 2,000
    assert cost.patch_images(PRESETS["default"], 300) == 300  # never more than the run trained on
    article = cost.patch_images(PRESETS["article"], 10_000)
    assert cost.PATCHES <= article < cost.PATCH_IMAGES  # its GFLOPs per image: fewer, and no floor above the budget
    work = cost.patch_work(PRESETS["article"], 10_000)
    assert work.allowed and work.heavy and work.seconds <= cost.PATCH_SECONDS
    assert 0.99 * cost.PATCH_SECONDS < work.seconds  # what the crops leave, spent on images
    first = cost.patch_images(PRESETS["article"], 10_000, "block1_conv")
    assert first == cost.PATCH_IMAGES > article  # an early block costs only the layers up to it


def test_a_block_whose_crops_alone_exceed_the_budget_searches_nothing() -> None:
    blocks = [c.name.removesuffix("_relu") for c in describe(LARGEST).layers if c.name.endswith("_relu")]
    counts = [cost.patch_images(LARGEST, 50_000, b) for b in blocks]
    assert counts[0] == cost.PATCH_IMAGES and counts == sorted(counts, reverse=True)  # deeper blocks cost more
    assert counts[-1] == 0 and not cost.patch_work(LARGEST, 50_000, blocks[-1]).allowed
    assert all(cost.patch_work(LARGEST, 50_000, b).allowed == (n > 0) for b, n in zip(blocks, counts))


def test_flops_through_a_block_count_the_layers_up_to_it() -> None:
    c = describe(PRESETS["default"])
    assert c.flops_through("block1_conv") == c.layer("block1_conv").flops  # the rescale, BN and ReLU cost none
    assert c.flops_through("up1_conv") == c.flops - c.layer("classifier").flops


def test_the_pages_refuse_the_largest_network_and_keep_the_default_in_the_page_thread() -> None:
    largest = cost.classify_work(LARGEST, 1)
    assert not largest.allowed and largest.bounded_seconds > cost.PAGE_SECONDS  # 26 s per image with its mirror
    assert not cost.classify_work(LARGEST.replace(mirror_predict=False), 1).allowed  # 13 s without it
    default = [cost.classify_work(PRESETS["default"], 28)] + [
        cost.inside_work(PRESETS["default"], kind, "block3_conv") for kind in cost.INSIDE_PASSES]
    assert all(w.allowed and not w.heavy for w in default)  # milliseconds: no worker thread
    article = [cost.inside_work(PRESETS["article"], kind, "block3_deconv") for kind in cost.INSIDE_PASSES]
    assert all(w.allowed for w in article + [cost.classify_work(PRESETS["article"], 20)])
    assert cost.classify_work(PRESETS["article"], 20).heavy  # 2.6 s: beside the page, with a progress line
