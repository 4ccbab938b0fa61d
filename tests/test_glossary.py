"""The glossary explains every layer the Architecture table can show, with arithmetic that matches the network."""

from __future__ import annotations

import numpy as np
import pytest

from deconv import glossary
from deconv.config import PRESETS, ModelConfig
from deconv.cost import describe

CONFIGS = [*PRESETS.values(), ModelConfig(widths=(8,), pool_size=1), ModelConfig(widths=(8, 16), head="flatten"),
           ModelConfig(widths=(8,), conv_stride=1, deconv_stride=2, deconv_kernel=3, pool_size=5),
           ModelConfig(widths=(8, 8, 8, 8), conv_stride=2, deconv_stride=1, pool_size=1),
           ModelConfig(upsample="resize", deconv_kernel=3)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c.widths)) + f"-{c.head}-{c.pool_size}-{c.upsample}")
def test_every_layer_type_in_the_table_has_an_explanation(config: ModelConfig) -> None:
    kinds = {layer.kind for layer in describe(config).layers}
    assert kinds <= set(glossary.LAYERS)
    assert [e.kind for e in glossary.explain(config)] == list(dict.fromkeys(c.kind for c in describe(config).layers))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c.widths)) + f"-{c.head}-{c.pool_size}-{c.upsample}")
def test_every_row_of_the_table_gets_a_note(config: ModelConfig) -> None:
    rows = glossary.notes(config)
    assert [(r.layer, r.kind) for r in rows] == [(c.name, c.kind) for c in describe(config).layers]
    assert all(r.note for r in rows)


def test_all_layer_types_the_builder_can_make_are_covered() -> None:
    assert set(glossary.LAYERS) == {"Rescaling", "Conv2D", "BatchNormalization", "ReLU", "Conv2DTranspose",
                                    "UpSampling2D", "MaxPooling2D", "Add", "AdaptiveAveragePooling2D", "GlobalAveragePooling2D", "Flatten",
                                    "Dense"}
    assert {"label smoothing", "augmentation"} <= set(glossary.TERMS)
    assert any("warmup-cosine" in term for term in glossary.TERMS)


def test_the_transposed_convolution_text_gives_both_padding_formulas() -> None:
    text = glossary.LAYERS["Conv2DTranspose"]
    assert "out = in x stride" in text and "out = (in - 1) x stride + kernel" in text


def test_deconv_notes_do_the_upsampling_arithmetic_of_a_stride_2_network() -> None:
    config = ModelConfig(widths=(32, 64, 128), conv_stride=1, deconv_kernel=4, deconv_stride=2, head="flatten",
                         block_deconvs=True, up_blocks=0)
    sizes = config.feature_sizes()
    notes = {r.layer: r.note for r in glossary.notes(config)}
    for i in range(config.blocks):
        size_in, size_out = sizes[2 * i], sizes[2 * i + 1]
        note = notes[f"block{i + 1}_deconv"]
        assert note.startswith(f"{size_in}x{size_in} → {size_out}x{size_out} because stride 2")
        assert f"{size_in} x 2 = {size_out}" in note
        assert f"({size_in} - 1) x 2 + 4 = {(size_in - 1) * 2 + 4}" in note  # what 'valid' padding would give


def test_conv_notes_do_the_downsampling_arithmetic() -> None:
    config = ModelConfig(widths=(8, 8, 8), conv_stride=2, deconv_stride=1, downsample="stride", block_deconvs=True,
                         up_blocks=0)
    sizes = config.feature_sizes()
    notes = {r.layer: r.note for r in glossary.notes(config)}
    assert notes["block1_conv"].startswith(f"32x32 → {sizes[0]}x{sizes[0]} because stride 2: ceil(32 / 2) = 16")
    assert notes["block3_conv"].startswith(f"{sizes[3]}x{sizes[3]} → {sizes[4]}x{sizes[4]}")


def test_valid_and_same_deconv_sizes_match_keras() -> None:
    import keras

    x = np.zeros((1, 5, 5, 1), np.float32)
    for padding in ("same", "valid"):
        for kernel, stride in ((2, 2), (3, 2), (4, 2), (3, 1)):
            layer = keras.layers.Conv2DTranspose(1, kernel, strides=stride, padding=padding)
            assert layer(x).shape[1] == glossary.deconv_size(5, kernel, stride, padding), (padding, kernel, stride)


@pytest.mark.parametrize("size_in,size_out", [(4, 2), (7, 3), (16, 5), (8, 3), (5, 5), (6, 4)])
def test_the_pool_window_formula_is_what_keras_computes(size_in: int, size_out: int) -> None:
    import keras

    image = np.random.default_rng(0).normal(size=(1, size_in, size_in, 2)).astype(np.float32)
    pooled = np.asarray(keras.layers.AdaptiveAveragePooling2D(size_out)(image))[0]
    windows = glossary.pool_windows(size_in, size_out)
    expected = np.array([[image[0, r0:r1, c0:c1].mean(axis=(0, 1)) for c0, c1 in windows] for r0, r1 in windows])
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)


def test_the_pool_note_lists_this_networks_windows() -> None:
    note = {r.layer: r.note for r in glossary.notes(ModelConfig(widths=(8,), pool_size=3, block_deconvs=True,
                                                                       up_blocks=0))}["pool"]
    assert note.startswith("16x16 → 3x3: windows over rows (and columns) 0-5, 5-10, 10-15, each 6 wide")


def test_the_augmentation_text_says_what_training_does() -> None:
    from deconv.config import TrainConfig

    assert f"up to {TrainConfig().shift} pixels" in glossary.TERMS["augmentation"]


def test_the_blocks_slider_has_its_own_help() -> None:
    from deconv.config import field_spec

    s = field_spec(ModelConfig, "widths")
    assert glossary.BLOCKS_HELP != s.help and f"{s.min_len} to {s.max_len}" in glossary.BLOCKS_HELP


def test_the_architecture_page_explains_the_chosen_layer_type(page) -> None:
    at = page("pages/architecture.py")
    assert not at.exception
    box = at.selectbox(key="architecture.layer_type")
    assert box.options == list(dict.fromkeys(c.kind for c in describe(ModelConfig()).layers))
    box.set_value("AdaptiveAveragePooling2D").run()
    text = " ".join(m.value for m in at.markdown)
    assert "floor(i x n / p)" in text and "`pool`: 8x8 → 2x2" in text
    at.radio(key="w.model_config.head").set_value("flatten").run()  # the chosen type is gone from the table
    assert not at.exception and "AdaptiveAveragePooling2D" not in at.selectbox(key="architecture.layer_type").options
    at.selectbox(key="architecture.layer_type").set_value("Flatten").run()
    assert "`flatten`: 8x8x64 → 4,096 numbers in one row" in " ".join(m.value for m in at.markdown)


def test_resize_then_convolve_notes_name_the_repeat_and_the_deconv_kernel() -> None:
    rows = {r.layer: r.note for r in glossary.notes(ModelConfig(upsample="resize", deconv_kernel=3))}
    assert rows["up1_deconv_resize"].startswith("4x4 → 8x8: each pixel repeated 2x2 times")
    assert "3x3 window" in rows["up1_deconv"]
    assert "Conv2DTranspose" not in {r.kind for r in glossary.notes(ModelConfig(upsample="resize"))}
