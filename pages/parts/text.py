"""How the pages word things: escaped visitor text, counts, durations, a network in one line."""

from __future__ import annotations

import re

from deconv.config import ModelConfig
from deconv.cost import describe
from deconv.jobs import fmt_duration

MARKDOWN = re.compile(r"([\\`*_{}\[\]()#!|$~<>:@])")  # what starts emphasis, a link (http:, a@b), an image, code
BARE_LINK = re.compile(r"(?i)(www)\.")  # GitHub-flavoured Markdown makes www.example.com a link


def plain(text: str) -> str:
    """Text that came from a file or a visitor, escaped so that Streamlit's markdown shows it as written."""
    return BARE_LINK.sub(r"\1\\.", MARKDOWN.sub(r"\\\1", text))


def fmt_count(n: float) -> str:
    """1234567 -> 1.23 M."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f}"


fmt_seconds = fmt_duration  # seconds as s, min or h, as the job manager words its refusals


def architecture_summary(config: ModelConfig) -> str:
    """One line: widths, head, parameters, FLOPs, and whether it answers with the mirror image too."""
    cost = describe(config)
    mirror = ", answers averaged with the mirror image" if config.mirror_predict else ""
    return (f"blocks {'-'.join(map(str, config.widths))}, {config.head} head: {cost.params:,} parameters, "
            f"{fmt_count(cost.flops)}FLOPs per image{mirror}")
