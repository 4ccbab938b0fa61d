"""Look inside the network for one image: every block's feature maps, and where the evidence for a class lies.

`probe(model)` is built once per model. `feature_maps` takes one forward pass through it;
`evidence` one forward and one backward pass, for both Grad-CAM and the gradient saliency.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from deconv.config import IMAGE_SIZE
from deconv.model import block_outputs

CHANNELS = 16  # the most active channels drawn per block
TILE = 64  # larger maps are averaged down to this size to draw (the article's 256x256 maps by 4)
LOGITS = "logits"  # the probe's output of class scores before the softmax


@dataclass(frozen=True)
class BlockMaps:
    """One block's output: its full shape, and its most active channels ready to draw."""

    name: str
    shape: tuple[int, int, int]  # height, width, channels of the whole output
    channels: list[int]  # the channels drawn, most active first
    tiles: np.ndarray  # (len(channels), h, w), each channel scaled to [0, 1]; h and w at most TILE

    @property
    def label(self) -> str:
        """'block1_deconv 16x16x32'."""
        return f"{self.name} {'x'.join(map(str, self.shape))}"

    @property
    def summary(self) -> str:
        """'16 most active of 128 channels, drawn at 64x64'."""
        drawn = self.tiles.shape[1]
        return f"{len(self.channels)} most active of {self.shape[2]} channels" + (
            f", drawn at {drawn}x{drawn}" if drawn < self.shape[0] else "")


@dataclass(frozen=True)
class Evidence:
    """Where one image holds evidence for one class, as (32, 32) maps in [0, 1]."""

    grad_cam: np.ndarray  # the last block's features, weighted by how much they raise the class score
    saliency: np.ndarray  # how strongly a small change of each pixel moves the class score


def probe(model: keras.Model) -> keras.Model:
    """A model from the image to each block's output and to the class scores before the softmax."""
    classifier = model.get_layer("classifier")
    # Grad-CAM wants the scores before the softmax: the classifier's Dense without its activation
    logits = keras.ops.matmul(classifier.input, classifier.kernel) + classifier.bias
    return keras.Model(model.inputs[0], {**block_outputs(model).output, LOGITS: logits})


def block_names(probe_model: keras.Model) -> list[str]:
    """The probe's blocks in network order: blockN_conv, blockN_deconv, then the decoder's upN_deconv, upN_conv."""
    def order(name: str) -> tuple[bool, int, bool]:
        part, layer = name.split("_", 1)
        decoder = part.startswith("up")
        return decoder, int(part.removeprefix("up").removeprefix("block")), (layer == "conv") == decoder
    return sorted((n for n in probe_model.output if n != LOGITS), key=order)


def _batch(image: np.ndarray) -> tf.Tensor:
    """One uint8 (32, 32, 3) image as a float batch of one."""
    return tf.convert_to_tensor(image[None].astype(np.float32))


def strongest(activations: np.ndarray, count: int = CHANNELS, size: int = TILE) -> tuple[list[int], np.ndarray]:
    """The `count` channels of highest mean activation, averaged down to at most size x size, each scaled to [0, 1]."""
    order = [int(c) for c in np.argsort(-activations.mean((0, 1)), kind="stable")[:count]]
    maps = activations[..., order].transpose(2, 0, 1)
    k, h, w = maps.shape
    f = max(1, -(-max(h, w) // size))
    maps = maps[:, : h // f * f, : w // f * f].reshape(k, h // f, f, w // f, f).mean((2, 4))
    top = maps.max((1, 2), keepdims=True)
    return order, np.divide(maps, top, out=np.zeros_like(maps), where=top > 0)


def feature_maps(probe_model: keras.Model, image: np.ndarray) -> list[BlockMaps]:
    """Every conv and deconv block's output for one uint8 (32, 32, 3) image, in network order."""
    outputs = probe_model(_batch(image), training=False)
    maps = []
    for name in block_names(probe_model):
        activations = np.asarray(outputs[name][0])
        h, w, c = activations.shape
        maps.append(BlockMaps(name, (h, w, c), *strongest(activations)))
    return maps


def _unit(heat: tf.Tensor) -> np.ndarray:
    """A (32, 32) map scaled by its maximum to [0, 1] (all zeros stays zeros)."""
    heat = np.asarray(heat, dtype=np.float32)
    top = float(heat.max())
    return heat / top if top > 0 else heat


def evidence(probe_model: keras.Model, image: np.ndarray, class_index: int) -> Evidence:
    """Grad-CAM from the last block and the gradient saliency of the pixels, for one class of one image."""
    x = _batch(image)
    with tf.GradientTape(watch_accessed_variables=False) as tape:  # no gradients for the weights: twice as fast
        tape.watch(x)
        outputs = probe_model(x, training=False)
        score = outputs[LOGITS][0, class_index]
    features = outputs[block_names(probe_model)[-1]]
    feature_grads, pixel_grads = tape.gradient(score, [features, x])
    weights = tf.reduce_mean(feature_grads, axis=(1, 2), keepdims=True)  # one weight per channel
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, (IMAGE_SIZE, IMAGE_SIZE), method="bilinear")[0, ..., 0]
    return Evidence(_unit(cam), _unit(tf.reduce_max(tf.abs(pixel_grads[0]), axis=-1)))
