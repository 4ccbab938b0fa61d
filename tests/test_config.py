"""ModelConfig and TrainConfig: defaults, bounds, messages, JSON round trips."""

from __future__ import annotations

import dataclasses

import pytest

from deconv.config import PRESETS, ModelConfig, TrainConfig, field_spec, preset


@pytest.mark.parametrize("cls", [ModelConfig, TrainConfig])
def test_defaults_are_valid_and_round_trip_through_json(cls: type) -> None:
    config = cls()
    assert cls.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("cls", [ModelConfig, TrainConfig])
def test_every_numeric_bound_is_enforced_with_a_message_naming_field_value_and_range(cls: type) -> None:
    for f in dataclasses.fields(cls):
        s = field_spec(cls, f.name)
        if s.low is None or s.min_len is not None:
            continue
        below = s.low - 1 if isinstance(f.default, int) else (s.low / 2 if s.low > 0 else s.low - 0.1)
        above = s.high + 1 if isinstance(f.default, int) else s.high * 2
        for bad in (below, above):
            with pytest.raises(ValueError) as err:
                cls(**{f.name: bad})
            message = str(err.value)
            assert f.name in message and str(bad) in message and "allowed" in message
        cls(**{f.name: s.low, **({"block_deconvs": True} if f.name == "up_blocks" else {})})  # a deconv remains
        cls(**{f.name: s.high}) if f.name != "pool_size" else None


def test_widths_bounds() -> None:
    with pytest.raises(ValueError, match=r"widths=\[\] has 0 values: allowed 1 to 4 values, each 8 to 256"):
        ModelConfig(widths=())
    with pytest.raises(ValueError, match="widths=7 is out of range"):
        ModelConfig(widths=(7,))
    with pytest.raises(ValueError, match="widths=300"):
        ModelConfig(widths=(32, 300))
    with pytest.raises(ValueError, match="5 values"):
        ModelConfig(widths=(8, 8, 8, 8, 8))
    assert ModelConfig(widths=[8, 256]).widths == (8, 256)


@pytest.mark.parametrize("changes", [{"epochs": "5"}, {"epochs": True}, {"epochs": 2.5}, {"learning_rate": float("nan")},
                                     {"learning_rate": "fast"}])
def test_malformed_values_are_refused(changes: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(changes))):
        TrainConfig(**changes)


def test_switches_take_only_booleans() -> None:
    with pytest.raises(ValueError, match="augment=1 must be true or false"):
        TrainConfig(augment=1)
    assert TrainConfig.from_dict({"xla": False}).xla is False


def test_choices_and_cross_field_checks() -> None:
    with pytest.raises(ValueError, match="head='dense' is not allowed: must be one of adaptive, flatten"):
        ModelConfig(head="dense")
    with pytest.raises(ValueError, match="512x512"):
        ModelConfig(widths=(8, 8, 8, 8), conv_stride=1, deconv_stride=2, block_deconvs=True, up_blocks=0)
    with pytest.raises(ValueError, match="pool_size=8 is larger than the final 4x4"):
        ModelConfig(pool_size=8, up_blocks=0, block_deconvs=True)
    with pytest.raises(ValueError, match="needs a Conv2DTranspose"):
        ModelConfig(up_blocks=0, block_deconvs=False)


def test_from_dict_rejects_unknown_keys_and_non_objects() -> None:
    with pytest.raises(ValueError, match="unknown TrainConfig field.*dropout"):
        TrainConfig.from_dict({"epochs": 3, "dropout": 0.5})
    with pytest.raises(ValueError, match="JSON object"):
        ModelConfig.from_dict([1, 2])
    assert TrainConfig.from_dict({"learning_rate": 1}).learning_rate == 1.0


def test_whole_floats_are_accepted_as_ints_as_json_may_write_them() -> None:
    assert TrainConfig.from_dict({"epochs": 3.0}).epochs == 3


def test_presets() -> None:
    assert preset("article") == PRESETS["article"]
    assert PRESETS["article"].to_dict() == {"widths": [32, 64, 128], "conv_kernel": 3, "conv_stride": 1,
                                            "deconv_kernel": 4, "deconv_stride": 2, "upsample": "transpose",
                                            "downsample": "stride",
                                            "block_deconvs": True, "up_blocks": 0, "skips": True,
                                            "head": "flatten", "pool_size": 1, "mirror_predict": False}
    assert PRESETS["default"].head == "adaptive"
    with pytest.raises(ValueError, match="preset='big' is not allowed: must be one of default, article"):
        preset("big")


def test_with_blocks_grows_and_shrinks() -> None:
    base = ModelConfig(widths=(32, 200))
    assert base.with_blocks(4).widths == (32, 200, 256, 256)
    assert base.with_blocks(1).widths == (32,)
    assert base.with_blocks(1).blocks == 1


@pytest.mark.parametrize("config", [ModelConfig(), PRESETS["article"], ModelConfig(widths=(8, 256), head="flatten"),
                                    TrainConfig(), TrainConfig(learning_rate=0.002, augment=False, epochs=3, seed=7)])
def test_settings_round_trip_through_the_url(config) -> None:
    query = config.to_query()
    assert all(isinstance(v, str) for v in query.values())
    assert type(config).from_query({**query, "client": "0123456789abcdef", "model": "x"}) == (config, [])


def test_defaults_are_left_out_of_the_url() -> None:
    assert ModelConfig().to_query() == {} and TrainConfig(epochs=3).to_query() == {"epochs": "3"}
    assert PRESETS["article"].to_query() == {"conv_stride": "1", "deconv_kernel": "4", "deconv_stride": "2",
                                             "downsample": "stride", "block_deconvs": "true", "up_blocks": "0",
                                             "head": "flatten", "pool_size": "1", "mirror_predict": "false"}


@pytest.mark.parametrize("params, expected, words", [
    ({"epochs": "1000"}, {"epochs": 200}, "epochs=1000 is not allowed (1 to 200): using 200"),
    ({"epochs": "-3"}, {"epochs": 1}, "using 1"),
    ({"batch_size": "130"}, {"batch_size": 128}, "in steps of 8"),
    ({"learning_rate": "1e9"}, {"learning_rate": 10.0}, "using 10"),
    ({"seed": "abc"}, {"seed": 0}, "seed='abc' is not a number: using 0"),
    ({"augment": "maybe"}, {"augment": True}, "not true or false"),
    ({"schedule": "linear"}, {"schedule": "warmup-cosine"}, "not one of warmup-cosine, constant"),
    ({"train_size": "inf"}, {"train_size": 10_000}, "not a number"),
])
def test_bad_train_settings_in_a_url_are_clamped_with_a_note(params, expected, words: str) -> None:
    config, notes = TrainConfig.from_query(params)
    assert config == TrainConfig(**expected) and len(notes) == 1 and words in notes[0]


@pytest.mark.parametrize("params, expected, words", [
    ({"widths": "9999,3,64"}, {"widths": (256, 8, 64)}, "using 256,8,64"),
    ({"widths": "8,8,8,8,8,8"}, {"widths": (8, 8, 8, 8)}, "1 to 4 values"),
    ({"widths": "a,b"}, {}, "not a list of numbers"),
    ({"pool_size": "8", "up_blocks": "0", "block_deconvs": "true"}, {"pool_size": 4, "up_blocks": 0, "block_deconvs": True},
     "pool_size=8 does not fit the other settings: using 4"),
    ({"widths": "32,32,32,32", "conv_stride": "1", "deconv_stride": "2", "block_deconvs": "true",
      "up_blocks": "0"}, {}, "512x512"),
    ({"head": "dense"}, {}, "not one of adaptive, flatten"),
])
def test_bad_model_settings_in_a_url_are_clamped_with_a_note(params, expected, words: str) -> None:
    config, notes = ModelConfig.from_query(params)
    assert config == ModelConfig().adjusted(**expected) and len(notes) == 1 and words in notes[0]


def test_deconv_shapes_and_the_checkerboard_rule() -> None:
    article = PRESETS["article"].deconv_shapes()
    assert [(d.size_in, d.size_out) for d in article] == [(32, 64), (64, 128), (128, 256)]
    assert not any(d.uneven for d in article)  # kernel 4, stride 2
    assert [(d.size_in, d.size_out, d.stride) for d in ModelConfig().deconv_shapes()] == [(4, 8, 2)]  # the decoder's
    pairs = ModelConfig(block_deconvs=True, up_blocks=0, downsample="stride")
    assert [(d.size_in, d.size_out) for d in pairs.deconv_shapes()] == [(16, 16), (8, 8), (4, 4)]
    assert all(d.uneven for d in pairs.replace(deconv_stride=2, deconv_kernel=3).deconv_shapes())
    assert not any(d.uneven for d in pairs.replace(deconv_stride=1, deconv_kernel=3).deconv_shapes())
    assert ModelConfig(deconv_kernel=3).deconv_shapes()[0].uneven  # the decoder's deconvs have stride 2


def test_encoder_decoder_shapes_and_skips() -> None:
    config = ModelConfig()
    assert config.feature_sizes() == [16, 8, 4, 8, 8] and config.decoder() == [(4, 8, 64, 1)]
    assert ModelConfig(up_blocks=2).decoder() == [(4, 8, 64, 1), (8, 16, 32, 0)]
    assert ModelConfig(up_blocks=3).decoder()[-1] == (16, 32, 32, None)  # no block output is 32x32: no skip
    assert ModelConfig(skips=False).decoder() == [(4, 8, 64, None)]
    assert ModelConfig(widths=(8,)).decoder() == [(16, 32, 8, None)]


def test_a_config_saved_before_the_decoder_fields_existed_keeps_its_network() -> None:
    old = {"widths": [32, 64, 128], "conv_kernel": 3, "conv_stride": 2, "deconv_kernel": 2, "deconv_stride": 1,
           "head": "adaptive", "pool_size": 2}  # a run's config.json from before downsample, up_blocks, ...
    config = ModelConfig.from_dict(old)
    assert (config.downsample, config.block_deconvs, config.up_blocks, config.skips) == ("stride", True, 0, False)
    assert config.feature_sizes() == [16, 16, 8, 8, 4, 4]
    assert ModelConfig.from_query({"deconv_kernel": "2"})[0].up_blocks == 1  # a link without them: today's defaults
