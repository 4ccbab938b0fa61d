"""The code to take home: one standalone Keras script that trains the network of a ModelConfig as a TrainConfig says.

The script needs nothing of Deconv Lab: plain Keras, TensorFlow and NumPy, CIFAR-10 from `keras.datasets`. Its
settings are the configs' fields, written once as constants at its top; the layers, their names and the training
follow deconv/model.py and deconv/train.py, so it builds the same network (the same parameter count).
"""

from __future__ import annotations

import dataclasses
import json
import re

from deconv.config import BN_MOMENTUM, IMAGE_SIZE, NUM_CLASSES, ModelConfig, Spec, TrainConfig

SCRIPT_NAME = "deconv_lab_train.py"


def _constants(config: ModelConfig | TrainConfig) -> str:
    """One line per config field: NAME = value  # what it is (the first clause of its help)."""
    lines = []
    for f in dataclasses.fields(config):
        s: Spec = f.metadata["spec"]
        what = re.split(r": |; |, so ", s.help)[0]
        if what.count("(") > what.count(")"):  # cut inside a parenthesis: leave it out
            what = what[: what.rfind(" (")]
        value = getattr(config, f.name)
        what = " or ".join(f'"{c}"' for c in s.choices) if s.choices else what
        lines.append(f"{f.name.upper()} = {json.dumps(value) if isinstance(value, str) else repr(value)}  # {what}")
    return "\n".join(lines)


def standalone_script(model_config: ModelConfig, train_config: TrainConfig) -> str:
    """A readable Python script that trains this network with these settings on CIFAR-10 and saves model.keras."""
    return TEMPLATE.format(model=_constants(model_config), train=_constants(train_config), name=SCRIPT_NAME,
                           image_size=IMAGE_SIZE, num_classes=NUM_CLASSES, bn_momentum=BN_MOMENTUM)


TEMPLATE = '''"""Train a deconvolutional network on CIFAR-10, as designed in Deconv Lab.

Written by Deconv Lab for the settings below; plain Keras 3 with TensorFlow (`pip install tensorflow`).
The first run downloads CIFAR-10 (163 MB) into ~/.keras/datasets.

    python {name}                                  # the settings below
    python {name} --epochs 1 --train-size 1000     # a quick try

It trains on a subset of the training images with equal counts per class, prints the validation accuracy
(measured on test images, equal counts per class) and saves the trained network as model.keras.
"""

import argparse

import keras
import numpy as np
import tensorflow as tf
from keras import layers

# ## Settings: the network

{model}

# ## Settings: the training

{train}

NUM_CLASSES = {num_classes}
IMAGE_SIZE = {image_size}
BN_MOMENTUM = {bn_momentum}  # Keras' default 0.99 lags behind for the few hundred steps of a short run


# ## Prepare the data


def class_balanced(x, y, n, rng):
    """n images (rounded down to a multiple of 10) with equal counts per class, in random order."""
    picks = [rng.permutation(np.flatnonzero(y == c))[: n // NUM_CLASSES] for c in range(NUM_CLASSES)]
    order = rng.permutation(np.concatenate(picks))
    return x[order], y[order]


def load_data(train_size, val_size):
    """A class-balanced subset of CIFAR-10's training images, and validation images from its test images."""
    (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    rng = np.random.default_rng(SEED)
    x_train, y_train = class_balanced(x_train, y_train.ravel(), train_size, rng)
    x_val, y_val = class_balanced(x_test, y_test.ravel(), val_size, rng)
    # One-hot targets, for CategoricalCrossentropy and its label smoothing
    y_train, y_val = keras.utils.to_categorical(y_train, NUM_CLASSES), keras.utils.to_categorical(y_val, NUM_CLASSES)
    return (x_train, y_train), (x_val, y_val)


def augment(image, label):
    """The image shifted by up to SHIFT pixels (edges reflected) and flipped left-right half the time."""
    padded = tf.pad(image, [[SHIFT, SHIFT], [SHIFT, SHIFT], [0, 0]], mode="REFLECT")
    image = tf.image.random_crop(padded, (IMAGE_SIZE, IMAGE_SIZE, 3), seed=SEED)
    return tf.image.random_flip_left_right(image, seed=SEED), label


def to_float(images, labels):
    """uint8 pixels as float32 (the model's Rescaling layer scales them to [0, 1])."""
    return tf.cast(images, tf.float32), labels


def pipelines(train, val, batch_size):
    """Shuffled (and augmented) training batches, whole ones only, and validation batches."""
    train_ds = tf.data.Dataset.from_tensor_slices(train).shuffle(len(train[0]), seed=SEED)
    if AUGMENT:
        train_ds = train_ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    train_ds = train_ds.batch(batch_size, drop_remainder=True).map(to_float).prefetch(tf.data.AUTOTUNE)
    val_ds = tf.data.Dataset.from_tensor_slices(val).batch(max(batch_size, 100)).map(to_float)
    return train_ds, val_ds


# ## Build the model


def conv_block(x, filters, kernel, stride, name, pool=False):
    """Conv2D (then 2x2 max pooling with `pool`), BatchNormalization, ReLU."""
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", name=name)(x)
    if pool:
        x = layers.MaxPooling2D(2, padding="same", name=f"{{name}}_pool")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{{name}}_bn")(x)
    return layers.ReLU(name=f"{{name}}_relu")(x)


def deconv_block(x, filters, kernel, stride, name):
    """Conv2DTranspose (or, with UPSAMPLE "resize", UpSampling2D then Conv2D), BatchNormalization, ReLU: maps the
    features up to a larger map when stride is 2."""
    if UPSAMPLE == "resize":
        if stride > 1:
            x = layers.UpSampling2D(stride, interpolation="nearest", name=f"{{name}}_resize")(x)
        x = layers.Conv2D(filters, kernel, padding="same", name=name)(x)
    else:
        x = layers.Conv2DTranspose(filters, kernel, strides=stride, padding="same", name=name)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{{name}}_bn")(x)
    return layers.ReLU(name=f"{{name}}_relu")(x)


def build_model():
    """The network for 32x32 RGB images with pixel values 0-255, ending in a 10-way softmax."""
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    x = layers.Rescaling(1 / 255, name="rescale")(inputs)  # scale pixels to [0, 1] inside the model
    outputs = []
    for i, width in enumerate(WIDTHS, start=1):  # the encoder
        pool = DOWNSAMPLE == "maxpool" and CONV_STRIDE == 2 and i > 1  # halve by max pooling after a stride-1 conv
        x = conv_block(x, width, CONV_KERNEL, 1 if pool else CONV_STRIDE, f"block{{i}}_conv", pool)
        if BLOCK_DECONVS:
            x = deconv_block(x, width, DECONV_KERNEL, DECONV_STRIDE, f"block{{i}}_deconv")
        outputs.append(x)
    for j in range(1, UP_BLOCKS + 1):  # the decoder maps the features back up, each block doubling the map
        mirror = max(len(WIDTHS) - 1 - j, 0)  # the encoder block whose width (and maybe map size) this one has
        x = deconv_block(x, WIDTHS[mirror], DECONV_KERNEL, 2, f"up{{j}}_deconv")
        if SKIPS and outputs[mirror].shape[1] == x.shape[1]:  # U-Net: add the encoder's map of the same size
            x = layers.Add(name=f"up{{j}}_skip")([x, outputs[mirror]])
        x = conv_block(x, WIDTHS[mirror], CONV_KERNEL, 1, f"up{{j}}_conv")
    if HEAD == "flatten":
        x = layers.Flatten(name="flatten")(x)
    elif POOL_SIZE == 1:
        # AdaptiveAveragePooling2D((1, 1)) fails inside fit/predict in Keras 3.15; this is the same operation.
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    else:
        x = layers.AdaptiveAveragePooling2D(POOL_SIZE, name="pool")(x)
        x = layers.Flatten(name="flatten")(x)
    probabilities = layers.Dense(NUM_CLASSES, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, probabilities, name="deconv_net")


def learning_rate(steps):
    """The learning rate: constant, or a warmup from a tenth of it over the first tenth of the steps, then a
    cosine curve down to 0."""
    if SCHEDULE == "constant":
        return LEARNING_RATE
    warmup = max(1, steps // 10)
    return keras.optimizers.schedules.CosineDecay(LEARNING_RATE / 10, decay_steps=max(1, steps - warmup),
                                                  warmup_target=LEARNING_RATE, warmup_steps=warmup)


# ## Train and evaluate


def main():
    """Parse the arguments, then load the data, build, train, evaluate and save the network."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--train-size", type=int, default=TRAIN_SIZE, help="training images, equal counts per class")
    parser.add_argument("--val-size", type=int, default=VAL_SIZE, help="validation images, equal counts per class")
    parser.add_argument("--out", default="model.keras", help="where to save the trained network")
    args = parser.parse_args()

    keras.utils.set_random_seed(SEED)
    train, val = load_data(args.train_size, args.val_size)
    batch_size = min(BATCH_SIZE, len(train[0]))
    train_ds, val_ds = pipelines(train, val, batch_size)

    model = build_model()
    print(f"parameters: {{model.count_params()}}")
    steps = args.epochs * (len(train[0]) // batch_size)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate(steps)),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=LABEL_SMOOTHING),
                  metrics=["accuracy"], jit_compile=XLA)
    model.fit(train_ds, validation_data=val_ds, epochs=args.epochs, shuffle=False, verbose=2)  # shuffled already

    loss, accuracy = model.evaluate(val_ds, verbose=0)
    print(f"validation accuracy: {{accuracy:.4f}} on {{len(val[0])}} images")
    if MIRROR_PREDICT:  # as Deconv Lab answers: each image's probabilities averaged with its mirror image's
        x_val, y_val = val
        probabilities = model.predict(x_val, verbose=0) + model.predict(x_val[:, :, ::-1], verbose=0)
        mirrored = np.mean(probabilities.argmax(1) == y_val.argmax(1))
        print(f"validation accuracy with the mirror images: {{mirrored:.4f}} on {{len(val[0])}} images")
    model.save(args.out)
    print(f"saved {{args.out}}")


if __name__ == "__main__":
    main()
'''
