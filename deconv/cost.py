"""What a ModelConfig costs, computed by hand without TensorFlow: shapes, parameters, FLOPs, memory.

Pages import this to update the Architecture table on every slider move in milliseconds, and to budget what they
compute for a visitor (`PageWork`); tests check it against the Keras model that `deconv.model.build_model` makes.
"""

from __future__ import annotations

from dataclasses import dataclass

from deconv.config import IMAGE_SIZE, NUM_CLASSES, ModelConfig, TrainConfig

BYTES_PER_FLOAT = 4
# Training FLOPs per image are about three forward passes (forward, two backward products).
TRAIN_FLOPS_FACTOR = 3
# Measured on a 2-core CPU (bench/run.py): the FLOP/s large models reach, the per-image cost that
# small models pay on top (data pipeline, BatchNormalization, framework), and the fixed start-up
# (reading CIFAR-10, building and compiling the model).
# Without XLA, on a quiet machine, the default network trains at about 111 GFLOP/s and the article's at about 101
# (bench/results.json); the rate below leaves room for a shared, busier machine (the estimate is then 10-20% high).
CPU_TRAIN_FLOPS_PER_SECOND = 90e9
PER_IMAGE_SECONDS = 0.01e-3
HEAVY_FLOPS = 1e9  # forward FLOPs per image above which checking a model on all validation images takes minutes
STARTUP_SECONDS = 8.0
# Peak memory of a training process, measured with /usr/bin/time -v on 2 CPU cores (TF 2.21), the article's network
# on 100 images: 5.1-5.4 GiB at batch 8 (XLA on or off alike), about 16 GiB at batch 64. TensorFlow and the compiled
# steps take about 1 GiB before any image; the weights are held about seven times (weights, gradients, Adam's two
# moments, the copy kept in case the loss turns NaN, XLA's buffers); a training step holds about 1.2x the forward
# activations of its batch; a forward pass to check or classify about 0.7x (the article's network, 100 images at
# once: 11.9 GB).
BASE_MEMORY_BYTES = 1 << 30
WEIGHT_COPIES = 7
TRAIN_ACTIVATION_FACTOR = 1.2
EVAL_ACTIVATION_FACTOR = 0.7
EVAL_MEMORY_BYTES = 1 << 30  # a checking or classifying pass takes batches of at most about this much activation
MAX_EVAL_BATCH = 256


@dataclass(frozen=True)
class LayerCost:
    """One Keras layer: its name and type, output shape (no batch axis), parameters, forward FLOPs."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    flops: int

    @property
    def activations(self) -> int:
        """Number of floats in this layer's output for one image."""
        n = 1
        for d in self.output_shape:
            n *= d
        return n


@dataclass(frozen=True)
class ModelCost:
    """The whole network's cost per image."""

    layers: tuple[LayerCost, ...]

    def layer(self, name: str) -> LayerCost:
        """The layer of that name (KeyError if none)."""
        found = next((c for c in self.layers if c.name == name), None)
        if found is None:
            raise KeyError(name)
        return found

    @property
    def params(self) -> int:
        """Total parameters, trainable and not (as Keras' count_params)."""
        return sum(layer.params for layer in self.layers)

    @property
    def flops(self) -> int:
        """Forward FLOPs per image: multiply-adds count 2 in conv, deconv and dense layers."""
        return sum(layer.flops for layer in self.layers)

    @property
    def activation_bytes(self) -> int:
        """Bytes of float32 layer outputs for one image's forward pass (kept for the backward pass)."""
        return BYTES_PER_FLOAT * sum(layer.activations for layer in self.layers)

    @property
    def param_bytes(self) -> int:
        """Bytes of the float32 weights."""
        return BYTES_PER_FLOAT * self.params

    def eval_batch(self, block: str | None = None) -> int:
        """The batch size for checking or classifying images: as many as fit EVAL_MEMORY_BYTES of activations (of the
        layers up to `block`'s output, for a probe that runs only that far)."""
        layers = self.layers if block is None else self.layers[:self.layers.index(self.layer(f"{block}_relu")) + 1]
        per_image = BYTES_PER_FLOAT * sum(c.activations for c in layers)
        return int(max(1, min(MAX_EVAL_BATCH, EVAL_MEMORY_BYTES // max(per_image, 1))))

    def train_memory_bytes(self, config: TrainConfig) -> int:
        """Estimated peak memory of a training process: runtime, data, weights, and the larger of a training
        step's and a validation batch's activations."""
        data = (config.train_size + config.val_size) * IMAGE_SIZE * IMAGE_SIZE * 3 * 2  # uint8, and a tensor copy
        train = TRAIN_ACTIVATION_FACTOR * min(config.batch_size, config.train_size) * self.activation_bytes
        check = EVAL_ACTIVATION_FACTOR * min(self.eval_batch(), config.val_size) * self.activation_bytes
        return int(BASE_MEMORY_BYTES + data + WEIGHT_COPIES * self.param_bytes + max(train, check))

    def train_seconds_per_epoch(self, images: int, flops_per_second: float = CPU_TRAIN_FLOPS_PER_SECOND) -> float:
        """Estimated seconds to train on `images` images once on a 2-core CPU."""
        return images * (TRAIN_FLOPS_FACTOR * self.flops / flops_per_second + PER_IMAGE_SECONDS)

    def train_seconds(self, config: TrainConfig) -> float:
        """Estimated seconds for a whole training: start-up, then each epoch's training and validation."""
        validate = config.val_size * (self.flops / CPU_TRAIN_FLOPS_PER_SECOND + PER_IMAGE_SECONDS / TRAIN_FLOPS_FACTOR)
        return STARTUP_SECONDS + config.epochs * (self.train_seconds_per_epoch(config.train_size) + validate)

    def flops_through(self, block: str) -> int:
        """Forward FLOPs per image up to `block`'s output (its ReLU): the layers built before it all feed it."""
        end = self.layers.index(self.layer(f"{block}_relu"))
        return sum(c.flops for c in self.layers[:end + 1])

    def as_rows(self) -> list[dict[str, object]]:
        """One plain dict per layer, for a table."""
        return [{"layer": c.name, "type": c.kind, "output shape": "x".join(map(str, c.output_shape)),
                 "parameters": c.params, "MFLOPs": round(c.flops / 1e6, 2)} for c in self.layers]


def _block(prefix: str, kind: str, size: int, cin: int, cout: int, kernel: int, in_size: int,
           pool: bool = False) -> list[LayerCost]:
    """The layers of a conv or deconv block: the convolution (then 2x2 max pooling), BatchNormalization, ReLU."""
    conv_size = in_size if pool else size  # a pooled block convolves every pixel, then halves the map
    positions = conv_size * conv_size if kind == "Conv2D" else in_size * in_size  # a deconv spreads each input pixel
    shape = (size, size, cout)
    conv = LayerCost(prefix, kind, (conv_size, conv_size, cout), kernel * kernel * cin * cout + cout,
                     2 * positions * kernel * kernel * cin * cout)
    return [
        conv, *([LayerCost(f"{prefix}_pool", "MaxPooling2D", shape, 0, 0)] if pool else []),
        LayerCost(f"{prefix}_bn", "BatchNormalization", shape, 4 * cout, 0),
        LayerCost(f"{prefix}_relu", "ReLU", shape, 0, 0),
    ]


def _deconv(prefix: str, config: ModelConfig, size: int, cin: int, cout: int, in_size: int) -> list[LayerCost]:
    """A deconv block: a Conv2DTranspose, or with upsample 'resize' an UpSampling2D (when it grows) and a Conv2D."""
    if config.upsample == "transpose":
        return _block(prefix, "Conv2DTranspose", size, cin, cout, config.deconv_kernel, in_size)
    resize = [LayerCost(f"{prefix}_resize", "UpSampling2D", (size, size, cin), 0, 0)] if size > in_size else []
    return resize + _block(prefix, "Conv2D", size, cin, cout, config.deconv_kernel, size)


PATCHES = 9  # top patches: images per channel, as in Zeiler and Fergus's grids
CHANNELS = 16  # the most active channels of a block drawn as feature maps and searched for top patches
PATCH_IMAGES = 2_000  # top patches search at most this many of a run's training images

# What the pages may compute on the server's CPU for a visitor (Classify's answers, Look inside, top patches), each
# computation estimated by its forward FLOPs at the training rate. The largest network ModelConfig allows (1.15
# TFLOPs per image) was measured here (issue #24, medians of process time on a busy 2-core machine): a forward pass
# 12.4 s (92 GFLOP per CPU second), with the mirror image 24.7 s, the feature maps 12.3 s, Grad-CAM 35 s.
LIVE_SECONDS = 1.0  # estimated longer: computed in a worker thread while the page shows a progress line
# One image's answer or look inside may take this long: the article's network takes 0.1-1 s; the largest network
# ModelConfig allows 13 s (26 s with its mirror image) and is refused, as is anything that costs more per image.
PAGE_SECONDS = 10.0
# A top-patches search, asked for with a toggle, may take this long. Its crops (a gradient per channel and patch)
# come first, the images searched take the rest: the article's network's deepest block crops in about 57 s and
# searches about 250 images; a block whose crops alone take longer is refused (an earlier block costs less).
PATCH_SECONDS = 90.0
GRADIENT_PASSES = TRAIN_FLOPS_FACTOR  # a gradient to the pixels: measured 2.8 forward passes (Grad-CAM, above)
INSIDE_PASSES = {  # forward passes' worth of FLOPs of each look inside one image
    "maps": 2,  # the feature maps, and the checkerboard scores of the upsampling blocks (a pass each)
    "evidence": GRADIENT_PASSES,  # Grad-CAM and the saliency of one class: one gradient to the pixels
    "projection": 1 + 2 * GRADIENT_PASSES,  # the block's activations, then a deconvnet and a guided gradient
}


@dataclass(frozen=True)
class PageWork:
    """A computation a page starts, by the cost model: its FLOPs, and the part of them a budget of seconds bounds."""

    flops: float  # all of it
    bounded: float  # what the budget bounds: one image's FLOPs, or a top-patches search's crops
    budget_seconds: float

    @property
    def seconds(self) -> float:
        """Estimated seconds for all of it."""
        return self.flops / CPU_TRAIN_FLOPS_PER_SECOND

    @property
    def bounded_seconds(self) -> float:
        """Estimated seconds of the bounded part."""
        return self.bounded / CPU_TRAIN_FLOPS_PER_SECOND

    @property
    def allowed(self) -> bool:
        """Whether the bounded part fits the budget (else the page says so instead of computing)."""
        return self.bounded_seconds <= self.budget_seconds

    @property
    def heavy(self) -> bool:
        """Whether it takes longer than LIVE_SECONDS: then a worker thread computes it, not the page's script."""
        return self.seconds > LIVE_SECONDS


def classify_work(config: ModelConfig, images: int) -> PageWork:
    """Classifying `images` images, each with its mirror image when the network predicts so; PAGE_SECONDS per image."""
    per_image = describe(config).flops * (2 if config.mirror_predict else 1)
    return PageWork(per_image * images, per_image, PAGE_SECONDS)


def inside_work(config: ModelConfig, kind: str, block: str | None = None) -> PageWork:
    """One look inside one image (an INSIDE_PASSES kind): through the whole network, or only up to `block`."""
    cost = describe(config)
    flops = INSIDE_PASSES[kind] * (cost.flops if block is None else cost.flops_through(block))
    return PageWork(flops, flops, PAGE_SECONDS)


def patch_work(config: ModelConfig, train_size: int, block: str | None = None) -> PageWork:
    """A top-patches search of `block` (the last one if None): its crops must fit PATCH_SECONDS, whose rest
    `patch_images` spends on images."""
    per_image, crops = _patch_costs(config, block)
    return PageWork(crops + per_image * patch_images(config, train_size, block), crops, PATCH_SECONDS)


def _patch_costs(config: ModelConfig, block: str | None) -> tuple[int, int]:
    """A top-patches search's FLOPs per image searched, and those of its crops (a gradient per channel and patch)."""
    cost = describe(config)
    layer = cost.layer(f"{block}_relu") if block else [c for c in cost.layers if c.name.endswith("_relu")][-1]
    per_image = cost.flops_through(layer.name.removesuffix("_relu"))
    return per_image, GRADIENT_PASSES * min(CHANNELS, layer.output_shape[-1]) * PATCHES * per_image


def patch_images(config: ModelConfig, train_size: int, block: str | None = None) -> int:
    """How many training images a top-patches search of `block` (the last one if None) looks at: what PATCH_SECONDS
    leaves after its crops, at most PATCH_IMAGES and train_size; 0 when that is fewer than PATCHES."""
    per_image, crops = _patch_costs(config, block)
    left = PATCH_SECONDS * CPU_TRAIN_FLOPS_PER_SECOND - crops
    most = min(PATCH_IMAGES, train_size, int(left // max(per_image, 1)))
    return most if most >= PATCHES else 0


def describe(config: ModelConfig) -> ModelCost:
    """Per-layer output shapes, parameters and FLOPs of `build_model(config)`, without building it."""
    layers = [LayerCost("rescale", "Rescaling", (IMAGE_SIZE, IMAGE_SIZE, 3), 0, 0)]
    sizes = iter(config.feature_sizes())
    size, channels = IMAGE_SIZE, 3
    for i, width in enumerate(config.widths, start=1):
        conv_size = next(sizes)
        layers += _block(f"block{i}_conv", "Conv2D", conv_size, channels, width, config.conv_kernel, size,
                         pool=config.pools(i))
        size, channels = conv_size, width
        if config.block_deconvs:
            deconv_size = next(sizes)
            layers += _deconv(f"block{i}_deconv", config, deconv_size, width, width, size)
            size = deconv_size
    for j, (_, size_out, width, skip) in enumerate(config.decoder(), start=1):
        layers += _deconv(f"up{j}_deconv", config, size_out, channels, width, size)
        if skip is not None:
            layers.append(LayerCost(f"up{j}_skip", "Add", (size_out, size_out, width), 0, 0))
        layers += _block(f"up{j}_conv", "Conv2D", size_out, width, width, config.conv_kernel, size_out)
        size, channels = size_out, width
    if config.head == "flatten":
        layers.append(LayerCost("flatten", "Flatten", (size * size * channels,), 0, 0))
    elif config.pool_size == 1:
        layers.append(LayerCost("pool", "GlobalAveragePooling2D", (channels,), 0, 0))
    else:
        p = config.pool_size
        layers.append(LayerCost("pool", "AdaptiveAveragePooling2D", (p, p, channels), 0, 0))
        layers.append(LayerCost("flatten", "Flatten", (p * p * channels,), 0, 0))
    features = layers[-1].output_shape[0]
    layers.append(LayerCost("classifier", "Dense", (NUM_CLASSES,), features * NUM_CLASSES + NUM_CLASSES,
                            2 * features * NUM_CLASSES))
    return ModelCost(tuple(layers))
