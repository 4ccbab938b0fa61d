"""Build the deconvolutional network from a ModelConfig with Keras layers."""

from __future__ import annotations

import keras
from keras import layers

from deconv.config import BN_MOMENTUM, IMAGE_SIZE, NUM_CLASSES, ModelConfig
from deconv.cost import describe  # noqa: F401  (re-exported: the cost of what build_model builds)


def conv_block(x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str,
               pool: bool = False) -> keras.KerasTensor:
    """Conv2D (then 2x2 max pooling with `pool`), BatchNormalization, ReLU."""
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", name=name)(x)
    if pool:
        x = layers.MaxPooling2D(2, padding="same", name=f"{name}_pool")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def deconv_block(x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str,
                 upsample: str = "transpose") -> keras.KerasTensor:
    """Conv2DTranspose (or UpSampling2D then Conv2D with upsample 'resize'), BatchNormalization, ReLU: maps
    features back up to a larger map when stride is 2."""
    if upsample == "resize":
        if stride > 1:
            x = layers.UpSampling2D(stride, interpolation="nearest", name=f"{name}_resize")(x)
        x = layers.Conv2D(filters, kernel, padding="same", name=name)(x)
    else:
        x = layers.Conv2DTranspose(filters, kernel, strides=stride, padding="same", name=name)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_model(config: ModelConfig) -> keras.Model:
    """The network for 32x32 RGB images with pixel values 0-255, ending in a 10-way softmax."""
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    x = layers.Rescaling(1 / 255, name="rescale")(inputs)  # scale pixels to [0, 1] inside the model
    outputs = []
    for i, width in enumerate(config.widths, start=1):
        pool = config.pools(i)
        x = conv_block(x, width, config.conv_kernel, 1 if pool else config.conv_stride, f"block{i}_conv", pool)
        if config.block_deconvs:
            x = deconv_block(x, width, config.deconv_kernel, config.deconv_stride, f"block{i}_deconv",
                             config.upsample)
        outputs.append(x)
    for j, (_, _, width, skip) in enumerate(config.decoder(), start=1):  # the decoder maps the features back up
        x = deconv_block(x, width, config.deconv_kernel, 2, f"up{j}_deconv", config.upsample)
        if skip is not None:  # U-Net: the block's map of the same size and width is added
            x = layers.Add(name=f"up{j}_skip")([x, outputs[skip]])
        x = conv_block(x, width, config.conv_kernel, 1, f"up{j}_conv")
    if config.head == "flatten":
        x = layers.Flatten(name="flatten")(x)
    elif config.pool_size == 1:
        # AdaptiveAveragePooling2D((1, 1)) fails inside fit/predict in Keras 3.15; this is the same operation.
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    else:
        x = layers.AdaptiveAveragePooling2D(config.pool_size, name="pool")(x)
        x = layers.Flatten(name="flatten")(x)
    probabilities = layers.Dense(NUM_CLASSES, activation="softmax", name="classifier")(x)
    model = keras.Model(inputs, probabilities, name="deconv_net")
    model.mirror_predict = config.mirror_predict  # read by inference.forward: how this network's answers are made
    return model


def mirror_predicts(model: keras.Model) -> bool:
    """Whether the model's answers average the image's and its mirror image's (a network built from a config)."""
    return bool(getattr(model, "mirror_predict", False))


def block_outputs(model: keras.Model) -> keras.Model:
    """A model that returns the output of every conv and deconv block (after its ReLU), for feature maps."""
    names = [layer.name for layer in model.layers if layer.name.endswith("_relu")]
    return keras.Model(model.inputs[0], {n.removesuffix("_relu"): model.get_layer(n).output for n in names})
