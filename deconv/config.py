"""Every architectural and training choice, with its default and its bounds, validated in one place.

The Streamlit sliders, the command-line flags and the model builder all read these classes;
a bound or a default is written here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

NUM_CLASSES = 10
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")  # the dataset's own order
IMAGE_SIZE = 32
MAX_FEATURE_SIZE = 256  # the article's largest feature map (32 upsampled three times)
# Keras' default 0.99 lags behind for the few hundred steps of a short run, making validation noisy.
BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class Spec:
    """Bounds and help text of one config field: a numeric range, a list length, or choices."""

    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    min_len: int | None = None
    max_len: int | None = None
    log: bool = False  # a log-scale knob (the learning rate)
    step: float = 1  # the slider step in the app (and the grid a link's value is rounded to)
    kind: str = "int"  # "int", "float", "bool", "choice" or "list" (of whole numbers): set by `spec` from the default
    count_label: str = ""  # a list field: the name of its length as the app shows it ("blocks" for widths)
    item_label: str = ""  # ... and of one value ("width" for widths: "width 1", "width 2", ...)
    legacy: Any = None  # for a field added later: the value that means "as before", for saved configs without it

    def parse(self, text: str) -> Any:
        """A value as a link or a flag writes it ('32,64' for a list, 'true' or 'no' for a switch).

        Bounds are the config's to check (a link's value is clamped, a flag's refused); ValueError says what is
        allowed when the text is not even of the field's kind.
        """
        text = text.strip()
        if self.kind == "bool":
            if text.lower() not in BOOL_WORDS:
                raise ValueError("allowed true or false")
            return BOOL_WORDS[text.lower()]
        if self.kind == "choice":
            if text not in (self.choices or ()):
                raise ValueError(f"allowed {self.describe()}")
            return text
        parts = [p for p in text.split(",") if p.strip()] if self.kind == "list" else [text]
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            numbers = []
        if not numbers or not all(math.isfinite(v) for v in numbers):
            raise ValueError(f"allowed {self.describe()}")
        whole = [int(v) if v.is_integer() and self.kind != "float" else v for v in numbers]
        return tuple(whole) if self.kind == "list" else whole[0]

    def widget(self) -> str:
        """The app's widget for this field: toggle, radio, select_slider (log scale), slider or number."""
        if self.kind in ("bool", "choice"):
            return {"bool": "toggle", "choice": "radio"}[self.kind]
        if self.log:
            return "select_slider"
        assert self.low is not None and self.high is not None
        return "slider" if self.kind == "float" or (self.high - self.low) / self.step <= 100_000 else "number"

    def grid(self) -> list[float]:
        """Values 1, 2, 5 per decade within the bounds, for a log-scale slider."""
        assert self.low is not None and self.high is not None
        values, decade = [], 10.0 ** math.floor(math.log10(self.low))
        while decade <= self.high:
            values += [round(m * decade, 12) for m in (1, 2, 5) if self.low <= m * decade <= self.high]
            decade *= 10
        return values

    def describe(self) -> str:
        """The allowed values in words, for error messages and help text."""
        if self.low is None and self.choices is None:
            return "true or false"
        if self.choices:
            return "one of " + ", ".join(self.choices)
        rng = f"{_fmt(self.low)} to {_fmt(self.high)}"
        if self.min_len is not None:
            return f"{self.min_len} to {self.max_len} values, each {rng}"
        return rng


def _fmt(x: float | None) -> str:
    """Format a bound without a trailing .0."""
    return str(int(x)) if x is not None and float(x).is_integer() and abs(x) < 1e15 else str(x)


BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def spec(default: Any, **kw: Any) -> Any:
    """A dataclass field carrying its default and its Spec (whose kind is the default's)."""
    kind = ("bool" if isinstance(default, bool) else "choice" if kw.get("choices") else
            "list" if isinstance(default, tuple) else "float" if isinstance(default, float) else "int")
    return field(default=default, metadata={"spec": Spec(kind=kind, **kw)})


def field_spec(cls: type, name: str) -> Spec:
    """The Spec of field `name` of a config class."""
    return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}[name]


def _check_scalar(name: str, value: Any, typ: type, s: Spec) -> Any:
    """Validate and normalise one scalar value against its Spec."""
    if s.choices:
        if not isinstance(value, str) or value not in s.choices:
            raise ValueError(f"{name}={value!r} is not allowed: must be {s.describe()}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
            raise ValueError(f"{name}={value!r} must be a whole number from {s.describe()}")
        value = int(value)
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name}={value!r} must be a number from {s.describe()}")
        value = float(value)
    elif typ is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r} must be true or false")
        return value
    if s.low is not None and not (s.low <= value <= s.high):
        raise ValueError(f"{name}={value!r} is out of range: allowed {s.describe()}")
    return value


class _Config:
    """Validation and JSON conversion shared by ModelConfig and TrainConfig."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            s: Spec = f.metadata["spec"]
            value = getattr(self, f.name)
            if s.min_len is not None:
                if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                    raise ValueError(f"{f.name}={value!r} must be a list of {s.describe()}")
                if not s.min_len <= len(value) <= s.max_len:
                    raise ValueError(f"{f.name}={list(value)} has {len(value)} values: allowed {s.describe()}")
                value = tuple(_check_scalar(f.name, v, int, s) for v in value)
            else:
                value = _check_scalar(f.name, value, KIND_TYPES.get(s.kind, str), s)
            object.__setattr__(self, f.name, value)
        self._check_together()

    def _check_together(self) -> None:
        """Checks that involve several fields (none by default)."""

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-ready dict."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """Build from a plain dict; unknown keys and bad values raise ValueError."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(map(str, unknown))}; known: {', '.join(sorted(known))}")
        before = {f.name: f.metadata["spec"].legacy for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                  if f.name not in data and f.metadata["spec"].legacy is not None}
        return cls(**before, **data)  # a config saved before a field existed keeps the network it described

    def replace(self, **changes: Any) -> Any:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def changed(self, **changes: Any) -> Any:
        """A copy with changes as a widget makes them (a config may adjust other fields to keep them valid)."""
        return self.replace(**changes)

    def with_length(self, name: str, n: int) -> Any:
        """A copy whose list field `name` has `n` values: extra ones repeat the last, fewer drop the last."""
        values = list(getattr(self, name))[:n]
        return self.changed(**{name: tuple(values + values[-1:] * (n - len(values)))})

    def differences(self, other: Any) -> list[str]:
        """The fields where `other` differs from this config, as 'name value (other value)' phrases."""
        return [f"{f.name.replace('_', ' ')} {_to_text(getattr(self, f.name))} (now {_to_text(getattr(other, f.name))})"
                for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)]  # type: ignore[arg-type]

    def to_query(self) -> dict[str, str]:
        """The fields that differ from the defaults, as URL query text (lists comma-separated)."""
        default = type(self)()
        return {f.name: _to_text(getattr(self, f.name)) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if getattr(self, f.name) != getattr(default, f.name)}

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> tuple[Any, list[str]]:
        """A config from URL query text, other keys ignored; values out of range are clamped and noted."""
        values: dict[str, Any] = {}
        notes: list[str] = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in params:
                value, note = _from_text(f.name, str(params[f.name]), f.metadata["spec"], f.default)
                values[f.name] = value
                notes += [note] if note else []
        try:
            config = cls._from_clamped(values)
        except ValueError as e:
            return cls(), notes + [f"{e}: using the default {cls.__name__} instead"]
        notes += [f"{k}={_to_text(v)} does not fit the other settings: using {_to_text(getattr(config, k))}"
                  for k, v in values.items() if getattr(config, k) != v and not any(n.startswith(f"{k}=") for n in notes)]
        return config, notes

    @classmethod
    def _from_clamped(cls, values: dict[str, Any]) -> Any:
        """Build from clamped values (a hook for checks that involve several fields)."""
        return cls(**values)


def _to_text(value: Any) -> str:
    """One config value as URL text."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown(text: str, quoted: bool = True, most: int = 40) -> str:
    """A value from a link as a note quotes it: shortened, so a long one cannot fill the page."""
    short = text if len(text) <= most else text[:most] + "..."
    return repr(short) if quoted else short


def _from_text(name: str, text: str, s: Spec, default: Any) -> tuple[Any, str | None]:
    """One value parsed from URL text (`Spec.parse`) and clamped to its Spec, with a note when it was changed."""
    try:
        parsed = s.parse(text)
    except ValueError:
        what = {"bool": "true or false", "choice": s.describe(), "list": "a list of numbers"}.get(s.kind, "a number")
        return default, f"{name}={_shown(text)} is not {what}: using {_to_text(default)}"
    if s.kind in ("bool", "choice"):
        return parsed, None
    numbers = list(parsed) if s.kind == "list" else [parsed]
    clamped = [min(max(v, s.low), s.high) for v in numbers]  # type: ignore[type-var]
    if s.kind != "float":
        step = int(s.step)
        clamped = [int(round(v / step) * step) if step > 1 else int(round(v)) for v in clamped]
        clamped = [min(max(v, int(s.low)), int(s.high)) for v in clamped]  # type: ignore[arg-type]
    value: Any = tuple(clamped[: s.max_len]) if s.kind == "list" else clamped[0]
    changed = value != (tuple(numbers) if s.kind == "list" else numbers[0])
    allowed = s.describe() + (f" in steps of {_fmt(s.step)}" if s.step > 1 else "")
    return value, (f"{name}={_shown(text, quoted=False)} is not allowed ({allowed}): using {_to_text(value)}" if changed else None)


KIND_TYPES: dict[str, type] = {"int": int, "float": float, "bool": bool}  # what a Spec kind holds (list items: int)


@dataclass(frozen=True)
class DeconvShape:
    """One Conv2DTranspose block's map size in and out, kernel and stride (padding 'same': out = in x stride)."""

    block: int
    size_in: int
    size_out: int
    kernel: int
    stride: int
    layer: str = ""  # the Keras layer's name: blockN_deconv, or upN_deconv in the decoder
    resize: bool = False  # upsample 'resize': UpSampling2D then a Conv2D, every output pixel sees the same overlap

    @property
    def uneven(self) -> bool:
        """A transposed conv whose kernel is not a multiple of the stride: output pixels get unequal overlap
        (checkerboard artifacts)."""
        return not self.resize and self.kernel % self.stride != 0


@dataclass(frozen=True)
class ModelConfig(_Config):
    """The network: `blocks` Conv2D blocks (each with a Conv2DTranspose with block_deconvs), `up_blocks` decoder
    blocks of a stride-2 Conv2DTranspose and a Conv2D, then a pooling head and softmax."""

    widths: tuple[int, ...] = spec((32, 64, 128), low=8, high=256, min_len=1, max_len=4, step=8,
                                   count_label="blocks", item_label="width",
                                   help="filters (output channels) of each block's Conv2D and Conv2DTranspose: "
                                        "more filters can learn more kinds of pattern, at more parameters and "
                                        "time; the number of values is the number of blocks")
    conv_kernel: int = spec(3, low=1, high=7, help="Conv2D kernel size: each output pixel looks at a kernel x kernel window")
    conv_stride: int = spec(2, low=1, high=2, help="Conv2D stride: how far the window jumps (2 halves the feature map)")
    deconv_kernel: int = spec(2, low=1, high=7,
                              help="Conv2DTranspose kernel size: each input pixel stamps a kernel x kernel patch "
                                   "onto the output; a multiple of the stride avoids checkerboard patterns")
    deconv_stride: int = spec(1, low=1, high=2,
                              help="Conv2DTranspose stride: the distance between stamps (2 doubles the feature "
                                   "map: out = in x stride with padding 'same')")
    upsample: str = spec("transpose", choices=("transpose", "resize"),
                         help="how a deconv maps features up: transpose: Conv2DTranspose stamps a kernel x kernel "
                              "patch per input pixel (checkerboard patterns when the kernel is not a multiple of the "
                              "stride); resize: UpSampling2D repeats each pixel stride x stride times, then a Conv2D "
                              "of the deconv kernel smooths it (Odena et al. 2016: no checkerboard by construction)")
    downsample: str = spec("maxpool", choices=("stride", "maxpool"), legacy="stride",
                           help="how a block with conv_stride 2 halves the map: stride: the conv window jumps 2 "
                                "pixels; maxpool (from the second block on): the conv looks at every pixel, then "
                                "2x2 max pooling keeps the strongest of each 4 (4x the conv's FLOPs, learns faster)")
    block_deconvs: bool = spec(False, legacy=True, help="end every block with a Conv2DTranspose of deconv_stride (the article's "
                                           "conv-deconv pairs); off: the blocks are convs only and the decoder's "
                                           "stride-2 deconvs map the features back up")
    up_blocks: int = spec(1, low=0, high=3, legacy=0,
                          help="decoder blocks after the last block, as in an encoder-decoder (U-Net): each is a "
                               "stride-2 Conv2DTranspose that doubles the map, with the width of the block before "
                               "(the first block's, when there is none), then a stride-1 Conv2D")
    skips: bool = spec(True, legacy=False, help="U-Net skip connections: add the block output of the same size and width to each "
                                  "decoder block's upsampled map, so the decoder sees the finer details again")
    head: str = spec("adaptive", choices=("adaptive", "flatten"),
                     help="adaptive: average the final map down to pool_size x pool_size, then Dense; "
                          "flatten: the article's Flatten then Dense, a weight for every value of the map")
    pool_size: int = spec(2, low=1, high=8,
                          help="output size of the adaptive pooling: the final map is averaged in this many "
                               "windows per side (1 = global average pooling, one mean per channel)")
    mirror_predict: bool = spec(True, legacy=False,
                                help="when predicting, run the image and its left-right mirror image through the "
                                     "network and average the two answers (flip test-time augmentation: about one "
                                     "point more accuracy for twice the prediction cost; training is unchanged)")

    @property
    def blocks(self) -> int:
        """The number of conv + deconv block pairs."""
        return len(self.widths)

    def pools(self, block: int) -> bool:
        """Whether block `block` (from 1) halves its map by max pooling after a stride-1 conv (downsample 'maxpool')."""
        return self.downsample == "maxpool" and self.conv_stride == 2 and block > 1

    def block_sizes(self) -> list[int]:
        """Spatial size of each block's output (after its conv, or its deconv with block_deconvs)."""
        sizes, size = [], IMAGE_SIZE
        for _ in self.widths:
            size = math.ceil(size / self.conv_stride)
            if self.block_deconvs:
                size = size * self.deconv_stride
            sizes.append(size)
        return sizes

    def feature_sizes(self) -> list[int]:
        """Spatial size after each conv and each deconv, in order (padding 'same'): every block's conv (and deconv),
        then every decoder block's deconv and conv."""
        sizes, size = [], IMAGE_SIZE
        for _ in self.widths:
            size = math.ceil(size / self.conv_stride)
            sizes.append(size)
            if self.block_deconvs:
                size = size * self.deconv_stride
                sizes.append(size)
        for _ in range(self.up_blocks):
            size *= 2
            sizes += [size, size]
        return sizes

    def decoder(self) -> list[tuple[int, int, int, int | None]]:
        """Each decoder block: (map size in, size out, width, index of the block whose output is added or None)."""
        blocks = self.block_sizes()
        out, size = [], blocks[-1]
        for j in range(1, self.up_blocks + 1):
            mirror = max(self.blocks - 1 - j, 0)
            skip = mirror if self.skips and blocks[mirror] == 2 * size else None
            out.append((size, 2 * size, self.widths[mirror], skip))
            size *= 2
        return out

    def deconv_shapes(self) -> list[DeconvShape]:
        """The map size into and out of each transposed-conv layer: the blocks' (with block_deconvs), then the
        decoder's (numbered after the blocks)."""
        shapes, size = [], IMAGE_SIZE
        if self.block_deconvs:
            for i in range(self.blocks):
                size = math.ceil(size / self.conv_stride)
                shapes.append(DeconvShape(i + 1, size, size * self.deconv_stride, self.deconv_kernel, self.deconv_stride,
                                          f"block{i + 1}_deconv", self.upsample == "resize"))
                size *= self.deconv_stride
        shapes += [DeconvShape(self.blocks + j + 1, a, b, self.deconv_kernel, 2, f"up{j + 1}_deconv",
                               self.upsample == "resize")
                   for j, (a, b, _, _) in enumerate(self.decoder())]
        return shapes

    def _check_together(self) -> None:
        if not self.block_deconvs and self.up_blocks == 0:
            raise ValueError("a deconvolutional network needs a Conv2DTranspose: turn block_deconvs on or use "
                             "up_blocks of 1 or more")
        biggest = max(self.feature_sizes())
        if biggest > MAX_FEATURE_SIZE:
            raise ValueError(
                f"widths has {self.blocks} blocks with conv_stride={self.conv_stride}, "
                f"deconv_stride={self.deconv_stride}{' (block deconvs on)' if self.block_deconvs else ''} and "
                f"up_blocks={self.up_blocks}: the feature map grows to {biggest}x{biggest}, larger than the allowed "
                f"{MAX_FEATURE_SIZE}x{MAX_FEATURE_SIZE}; use fewer blocks, fewer up_blocks or other strides")
        final = self.feature_sizes()[-1]
        if self.head == "adaptive" and self.pool_size > final:
            raise ValueError(f"pool_size={self.pool_size} is larger than the final {final}x{final} feature map: allowed 1 to {final}")

    @classmethod
    def _from_clamped(cls, values: dict[str, Any]) -> "ModelConfig":
        """Clamped URL values may still combine badly: the pool size is lowered to fit, as a slider would."""
        return cls().adjusted(**values)

    def changed(self, **changes: Any) -> "ModelConfig":
        """A widget's change: the adaptive pool size is lowered to fit a smaller final map (see `adjusted`)."""
        return self.adjusted(**changes)

    def with_length(self, name: str, n: int) -> "ModelConfig":
        """The widths with `n` blocks (see `with_blocks`)."""
        return self.with_blocks(n) if name == "widths" else super().with_length(name, n)

    def adjusted(self, **changes: Any) -> "ModelConfig":
        """A copy with changes, the adaptive pool size lowered to fit a smaller final map instead of refused."""
        probe = self.replace(**{**changes, "pool_size": 1})
        return probe.replace(pool_size=min(changes.get("pool_size", self.pool_size), probe.feature_sizes()[-1]))

    def with_blocks(self, n: int) -> "ModelConfig":
        """A copy with `n` blocks: extra blocks double the last width (capped), fewer drop the last."""
        s = field_spec(ModelConfig, "widths")
        widths = list(self.widths[:n])
        while len(widths) < n:
            widths.append(int(min(widths[-1] * 2, s.high)))
        return self.adjusted(widths=tuple(widths))


@dataclass(frozen=True)
class TrainConfig(_Config):
    """How the network is trained: data sizes, epochs, batch size, learning rate, seed."""

    train_size: int = spec(10_000, low=100, high=50_000, step=100, help="training images, equal counts per class")
    val_size: int = spec(2_000, low=100, high=10_000, step=100, help="validation images from test_batch, equal counts per class")
    epochs: int = spec(5, low=1, high=200, help="passes over the training images")
    batch_size: int = spec(64, low=8, high=1024, step=8, help="images per training step")
    learning_rate: float = spec(5e-3, low=1e-5, high=10.0, log=True, help="Adam learning rate (the peak, with warmup-cosine)")
    seed: int = spec(0, low=0, high=2**31 - 1, help="seed for the subset, the weights and the shuffling")
    schedule: str = spec("warmup-cosine", choices=("warmup-cosine", "constant"),
                         help="warmup-cosine: rise from a tenth of the learning rate to it over the first "
                              "tenth of the steps, then fall along a cosine curve to 0; constant: one rate "
                              "throughout")
    augment: bool = spec(True, help="show each training image flipped left-right half the time and shifted by "
                                    "up to shift pixels, so the network learns that these do not change the class")
    shift: int = spec(2, low=0, high=8, legacy=4,
                      help="with augment, the most pixels an image is shifted in each direction (the edges mirrored "
                           "to fill the gap); 0: flips only. In a 5-epoch run 2 learns more than 4")
    label_smoothing: float = spec(0.2, low=0.0, high=0.5, step=0.05,
                                  help="spread this share of each target evenly over all 10 classes (0.2: the "
                                       "true class 0.82, the others 0.02), so the network is never pushed to be "
                                       "certain")
    xla: bool = spec(False, legacy=True,
                     help="compile the training step with XLA: a few seconds more to start and, measured on 2 CPU "
                          "cores, 1.3x slower for the default network and 1.75x for the article's; faster only for "
                          "small strided networks without pooling")

    @property
    def images_per_epoch(self) -> int:
        """How many training images one epoch really uses: whole batches only."""
        batch, steps = epoch_batches(self.train_size, self.batch_size)
        return batch * steps


def epoch_batches(images: int, batch_size: int) -> tuple[int, int]:
    """The batch size and the number of whole batches an epoch of `images` takes (a last partial batch is dropped)."""
    batch = min(batch_size, images)
    return batch, images // batch


PRESETS: dict[str, ModelConfig] = {
    # Sized for a 2-core CPU: an encoder of 3x3 convs (stride 2, then max pooling) down to 4x4, a decoder whose
    # stride-2 2x2 deconv maps it back up to 8x8 with a U-Net skip and a conv, 2x2 adaptive pooling.
    "default": ModelConfig(),
    # The article's exact network: three upsampling deconvs to 256x256x128, flattened into Dense.
    "article": ModelConfig(widths=(32, 64, 128), conv_kernel=3, conv_stride=1, deconv_kernel=4,
                           deconv_stride=2, upsample="transpose", downsample="stride", block_deconvs=True, up_blocks=0,
                           head="flatten", pool_size=1, mirror_predict=False),
}


def preset(name: str) -> ModelConfig:
    """The named preset, or a ValueError that lists the names."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not allowed: must be one of {', '.join(PRESETS)}")
    return PRESETS[name]
