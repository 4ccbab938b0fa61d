"""Check a run a visitor uploaded, in a child process with a memory limit: `python -m deconv.runcheck DIR [BYTES]`.

With BYTES, the process limits its own address space to that before it reads anything of the run (the parent
does not set the limit between fork and exec: a `preexec_fn` is unsafe once the server runs threads). Started by
the server, it holds a lifeline (deconv.lifeline) and ends as soon as the server is gone, however it ended.

The network is rebuilt from the run's config.json and only the weights are read from its model.keras; a
forward pass must give finite probabilities. Then the model.keras is written anew from the rebuilt
network, so what the app keeps and later loads holds nothing of the uploaded file but its weights.
Exit 0 when the run is good; otherwise one line `error: WHY` on stderr and exit 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from deconv import runs
from deconv.config import IMAGE_SIZE
from deconv.lifeline import watch_lifeline


def check(run_dir: Path) -> None:
    """Load, try and rewrite the run's model; RunError says what is wrong."""
    from deconv.inference import predict

    model = runs.load_model(run_dir)
    probs = predict(model, np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))
    if not np.isfinite(probs).all():
        raise runs.RunError("its weights give no usable answer (NaN or infinite)")
    clean = run_dir / ".clean.keras"
    model.save(clean)
    os.replace(clean, run_dir / "model.keras")


def main(argv: list[str]) -> int:
    """Check the run folder named by the first argument, within the address space the second allows."""
    watch_lifeline()  # started by the server (deconv.run_import): end with it, before anything of the run is read
    if len(argv) > 1:
        import resource

        limit = int(argv[1])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        check(Path(argv[0]))
    except runs.RunError as e:
        print(f"error: {str(e).split(': ', 1)[-1]}", file=sys.stderr)
        return 1
    except MemoryError:
        print("error: its weights need more memory than this network can hold", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
