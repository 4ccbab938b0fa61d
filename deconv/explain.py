"""Look inside the network for one image: every block's feature maps, and where the evidence for a class lies.

`probe(model)` is built once per model. `feature_maps` takes one forward pass through it;
`evidence` one forward and one backward pass, for both Grad-CAM and the gradient saliency.
`project` sends one activation back to the pixels the way Zeiler and Fergus's deconvnet does (and by guided
backpropagation beside it); `top_patches` finds, per channel, the training images that excite it most;
`checkerboard` measures how unevenly an upsampled map fills its stride's phase positions.
The probes are built once per model and kept on it; `through` runs a probe only as far as one block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from deconv.config import IMAGE_SIZE, ModelConfig
from deconv.cost import CHANNELS, PATCHES
from deconv.model import block_outputs, build_model

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


def _kept(model: keras.Model, name: str, build: Callable[[], object]) -> object:
    """`build()`, made once per model and kept on it (past Keras' attribute tracking), as inference.forward is."""
    found = getattr(model, name, None)
    if found is None:
        found = build()
        object.__setattr__(model, name, found)
    return found


def probe(model: keras.Model) -> keras.Model:
    """A model from the image to each block's output and to the class scores before the softmax (one per model)."""
    def build() -> keras.Model:
        classifier = model.get_layer("classifier")
        # Grad-CAM wants the scores before the softmax: the classifier's Dense without its activation
        logits = keras.ops.matmul(classifier.input, classifier.kernel) + classifier.bias
        return keras.Model(model.inputs[0], {**block_outputs(model).output, LOGITS: logits})
    return _kept(model, "_probe", build)  # type: ignore[return-value]


def through(probe_model: keras.Model, block: str) -> keras.Model:
    """The part of a probe that computes `block`'s output alone (one per probe and block): the layers after it do not
    run, so an early block's projection or top patches cost only the layers up to it (cost.ModelCost.flops_through)."""
    parts: dict[str, keras.Model] = _kept(probe_model, "_through", dict)  # type: ignore[assignment]
    if block not in parts:
        parts[block] = keras.Model(probe_model.inputs[0], probe_model.output[block])
    return parts[block]


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


# Backward rules for a ReLU, as a (forward input, backward signal) -> backward signal function.
RULES: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {
    # Zeiler and Fergus's deconvnet: the backward signal is itself rectified, whatever the forward pass did
    "deconvnet": lambda x, dy: tf.nn.relu(dy),
    # Springenberg et al.'s guided backpropagation: only where the forward input was positive too
    "guided": lambda x, dy: tf.nn.relu(dy) * tf.cast(x > 0, dy.dtype),
    # every signal passes: the pixels a unit sees at all, for the crop of its receptive field
    "open": lambda x, dy: dy,
}


class RuleReLU(keras.layers.Layer):
    """A ReLU forward whose backward pass follows one of RULES (a `tf.custom_gradient`)."""

    def __init__(self, rule: str, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.rule = RULES[rule]

    def call(self, x: tf.Tensor) -> tf.Tensor:
        """max(0, x), with the rule's gradient."""
        @tf.custom_gradient
        def relu(x: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
            return tf.nn.relu(x), lambda dy: self.rule(x, dy)
        return relu(x)


def backward_probe(model: keras.Model, rule: str) -> keras.Model:
    """Every block's output of `model` (sharing its weights), its ReLUs passing the backward signal by `rule`."""
    def swap(layer: keras.layers.Layer) -> keras.layers.Layer:
        return RuleReLU(rule, name=layer.name) if isinstance(layer, keras.layers.ReLU) else layer
    return block_outputs(keras.models.clone_model(model, clone_function=swap))


@dataclass(frozen=True)
class Projection:
    """One activation of one channel, projected back to the image (Zeiler and Fergus 2014)."""

    block: str
    channel: int
    position: tuple[int, int]  # row and column of the activation in the block's map
    activation: float
    feature_map: np.ndarray  # (h, w) the channel's whole map, scaled to [0, 1]
    deconvnet: np.ndarray  # (32, 32, 3) the deconvnet's projection in [0, 1], grey (0.5) where nothing came back
    guided: np.ndarray  # (32, 32, 3) guided backpropagation of the same activation, the same way

    @property
    def label(self) -> str:
        """'block3_conv channel 17 at (2, 3)'."""
        return f"{self.block} channel {self.channel} at ({self.position[0]}, {self.position[1]})"


def _signed_image(signal: np.ndarray) -> np.ndarray:
    """A signed (32, 32, 3) signal as an image: 0 is grey, the largest magnitude black or white."""
    top = float(np.abs(signal).max())
    return np.clip(0.5 + 0.5 * signal / top, 0, 1) if top > 0 else np.full_like(signal, 0.5)


def _unit_gradient(probe_model: keras.Model, images: tf.Tensor, block: str,
                   units: np.ndarray) -> np.ndarray:
    """The gradient of one unit per image (units: (n, 3) rows of row, column, channel) with respect to its pixels."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(images)
        activations = through(probe_model, block)(images, training=False)
        picked = tf.gather_nd(activations, np.concatenate([np.arange(len(units))[:, None], units], axis=1))
        total = tf.reduce_sum(picked)  # images do not mix in inference: each unit's gradient lands in its own image
    return np.asarray(tape.gradient(total, images))


def strongest_unit(activations: np.ndarray, channel: int | None = None) -> tuple[int, int, int]:
    """The (row, column, channel) of the highest activation of a (h, w, c) map, within `channel` if given."""
    scores = activations if channel is None else activations[..., channel:channel + 1]
    row, col, c = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return int(row), int(col), int(c if channel is None else channel)


def project(model: keras.Model, image: np.ndarray, block: str, channel: int | None = None,
            probes: dict[str, keras.Model] | None = None) -> Projection:
    """One activation of `block` for a uint8 (32, 32, 3) image (the strongest, or the strongest of `channel`), the
    rest of the layer zeroed, sent back to pixel space by the deconvnet rule and by guided backpropagation."""
    probes = probes if probes is not None else backward_probes(model)
    x = _batch(image)
    activations = np.asarray(through(probes["deconvnet"], block)(x, training=False)[0])
    if channel is not None and not 0 <= channel < activations.shape[-1]:
        raise ValueError(f"{block} has channels 0 to {activations.shape[-1] - 1}, not {channel}")
    row, col, c = strongest_unit(activations, channel)
    unit = np.array([[row, col, c]])
    deconvnet, guided = (_unit_gradient(probes[rule], x, block, unit)[0] for rule in ("deconvnet", "guided"))
    feature = activations[..., c]
    top = float(feature.max())
    return Projection(block, c, (row, col), float(activations[row, col, c]),
                      feature / top if top > 0 else np.zeros_like(feature),
                      _signed_image(deconvnet), _signed_image(guided))


def backward_probes(model: keras.Model) -> dict[str, keras.Model]:
    """The deconvnet, guided and open backward probes of a model, built once, kept on it, and reused."""
    def build() -> dict[str, keras.Model]:
        return {rule: backward_probe(model, rule) for rule in RULES}
    return _kept(model, "_backward_probes", build)  # type: ignore[return-value]


@dataclass(frozen=True)
class TopPatches:
    """For each channel of a block, the training images that activate it most, cropped to what the unit sees."""

    block: str
    channels: list[int]  # the channels, most active (over all the searched images) first
    patches: np.ndarray  # (channels, PATCHES, size, size, 3) uint8 crops, each resized to `size`
    activations: np.ndarray  # (channels, PATCHES) the activation each crop gave
    images: np.ndarray  # (channels, PATCHES) which training image each crop came from
    searched: int  # how many training images were searched


def receptive_box(gradient: np.ndarray) -> tuple[int, int, int, int]:
    """The square (top, left, bottom, right) that holds every pixel with a nonzero gradient (the whole image if none)."""
    rows, cols = np.nonzero(np.abs(gradient).sum(-1))
    if not len(rows):
        return 0, 0, IMAGE_SIZE, IMAGE_SIZE
    top, left, bottom, right = rows.min(), cols.min(), rows.max() + 1, cols.max() + 1
    side = max(bottom - top, right - left)
    top = int(np.clip((top + bottom - side) // 2, 0, IMAGE_SIZE - side))
    left = int(np.clip((left + right - side) // 2, 0, IMAGE_SIZE - side))
    return top, left, top + side, left + side


def top_patches(model: keras.Model, images: np.ndarray, block: str, channels: int = CHANNELS, count: int = PATCHES,
                size: int = 24, batch_size: int = 250, probes: dict[str, keras.Model] | None = None,
                progress: Callable[[float], None] | None = None) -> TopPatches:
    """The `count` images that activate each of a block's `channels` most active channels most, each cropped to the
    receptive field of its strongest unit: one batched forward pass over `images`, one backward pass per channel;
    `progress` is told the share of those steps done after each."""
    probes = probes if probes is not None else backward_probes(model)
    searching = through(probes["open"], block)
    steps = -(-len(images) // batch_size) + min(channels, int(searching.output.shape[-1]))
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done / steps)

    peaks, where = [], []  # per image and channel: the highest activation and its position
    for start in range(0, len(images), batch_size):
        a = np.asarray(searching(tf.convert_to_tensor(images[start:start + batch_size], tf.float32), training=False))
        n, h, w, c = a.shape
        flat = a.reshape(n, h * w, c)
        peaks.append(flat.max(1))
        where.append(flat.argmax(1))
        step()
    peak, spot = np.concatenate(peaks), np.concatenate(where)
    w = a.shape[2]
    order = [int(c) for c in np.argsort(-peak.mean(0), kind="stable")[:channels]]
    crops, values, picks = [], [], []
    for c in order:
        best = np.argsort(-peak[:, c], kind="stable")[:count]
        units = np.stack([spot[best, c] // w, spot[best, c] % w, np.full(len(best), c)], axis=1)
        grads = _unit_gradient(probes["open"], tf.convert_to_tensor(images[best], tf.float32), block, units)
        row = []
        for i, g in zip(best, grads):
            top, left, bottom, right = receptive_box(g)
            row.append(np.asarray(tf.image.resize(images[i][top:bottom, left:right], (size, size),
                                                  method="nearest"), np.uint8))
        crops.append(np.stack(row))
        values.append(peak[best, c])
        picks.append(best)
        step()
    return TopPatches(block, order, np.stack(crops), np.stack(values), np.stack(picks), len(images))


def checkerboard(activations: np.ndarray, stride: int = 2) -> float:
    """How unevenly a (h, w, c) map fills the stride x stride phase positions: the spread (largest minus smallest)
    of each channel's phase means, summed over the channels, over the sum of their averages. 0 is perfectly even;
    a strong channel weighs more than a nearly silent one."""
    h, w, c = activations.shape
    a = np.asarray(activations, np.float64)[: h // stride * stride, : w // stride * stride]
    phases = a.reshape(h // stride, stride, w // stride, stride, c).mean((0, 2)).reshape(stride * stride, c)
    total = float(np.abs(phases.mean(0)).sum())
    return float((phases.max(0) - phases.min(0)).sum() / total) if total > 0 else 0.0


def upsampled_blocks(probe_model: keras.Model) -> list[str]:
    """The probe's blocks whose map is larger than the block's before it: the deconvs that map features back up."""
    names = block_names(probe_model)
    sizes = [probe_model.output[n].shape[1] for n in names]
    return [n for n, before, after in zip(names[1:], sizes, sizes[1:]) if after > before]


def checkerboards(probe_model: keras.Model, image: np.ndarray) -> dict[str, float]:
    """The checkerboard score of each upsampling block's output for one uint8 (32, 32, 3) image."""
    outputs = probe_model(_batch(image), training=False)
    return {n: checkerboard(np.asarray(outputs[n][0])) for n in upsampled_blocks(probe_model)}


def untrained_checkerboards(config: ModelConfig, images: np.ndarray, seed: int = 0) -> dict[str, float]:
    """The median checkerboard score of each upsampling block of `config`'s network at its initial weights (seeded)
    over uint8 (n, 32, 32, 3) images: what the upsampling itself does, before training shapes it."""
    keras.utils.set_random_seed(seed)
    probe_model = probe(build_model(config))
    scores = [checkerboards(probe_model, image) for image in images]
    return {name: float(np.median([s[name] for s in scores])) for name in upsampled_blocks(probe_model)}
