"""The models the service can serve, how each one is split over ranks, and what a valid request for it is.

A model here is what `labkit serve --model NAME` names: a builder (seeded, so every rank and a single-process
reference hold the same weights), its input contract (checked on rank 0 before anything is broadcast) and its
tensor-parallel policy for `deepspeed.init_inference`: the block class whose Linear layers AutoTP splits, and the
layers whose outputs it all-reduces (row-parallel). Widths are multiples of 64 x ranks: AutoTP splits in chunks of 64.
torch is imported lazily (`labkit serve --help` stays fast).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

from labkit.errors import ConfigError

SEED = 0
TP_GRAIN = 64  # AutoTP's split granularity: every split width must be a multiple of 64 x tp_size


@dataclass(frozen=True)
class ModelInfo:
    """What the service and its clients need to know about one servable model."""

    name: str
    about: str
    kind: str  # "float": rows of `features` floats | "tokens": rows of token ids in [0, vocab)
    features: int = 0  # float rows: exact length
    max_len: int = 0  # token rows: longest sequence
    vocab: int = 0
    outputs: int = 1  # numbers per answer row
    split_width: int = 0  # the smallest width AutoTP splits (tp_size must divide it in chunks of 64)

    def tp_sizes(self, most: int = 8) -> list[int]:
        """Tensor-parallel sizes this model splits evenly into (1 always works)."""
        return [n for n in range(1, most + 1) if self.split_width % (TP_GRAIN * n) == 0]


MODELS = {
    "regressor": ModelInfo(
        "regressor",
        "the seed's shape: 10 floats in, 1 float out (an MLP 10 -> 256 -> 1, its hidden layer split over ranks)",
        "float",
        features=10,
        outputs=1,
        split_width=256,
    ),
    "transformer": ModelInfo(
        "transformer",
        "a small causal transformer (vocabulary 256, context 32, 2 blocks of width 128 with 2 heads of 64, LayerNorms, "
        "an output head): token ids in, next-token logits out",
        "tokens",
        max_len=32,
        vocab=256,
        outputs=256,
        split_width=128,
    ),
}


def model_info(name: str) -> ModelInfo:
    if name not in MODELS:
        raise ConfigError("model", f"unknown model {name!r}", f"use one of {', '.join(MODELS)}")
    return MODELS[name]


def check_tp_size(name: str, tp_size: int) -> None:
    """ConfigError unless `tp_size` ranks split the model evenly (before any rank starts)."""
    info = model_info(name)
    if tp_size not in info.tp_sizes(max(8, tp_size)):
        fix = f"use a world size in {info.tp_sizes()} for --model {name}, or --mode replicas (any world size)"
        problem = f"{tp_size} ranks cannot split its width {info.split_width} in chunks of {TP_GRAIN}"
        raise ConfigError("world_size", problem, fix)


# ------------------------------------------------------------------------------------------------ request checks
class BadRequest(ValueError):
    """A request the service refuses with HTTP 422 before any rank sees it; the message says what and where."""


def check_inputs(info: ModelInfo, inputs: Any, max_batch: int) -> list[list]:
    """The request's `inputs` as validated rows, or BadRequest naming the first problem (shape, type, NaN, size)."""
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'inputs' must be a non-empty list of rows")
    if len(inputs) > max_batch:
        raise BadRequest(f"batch of {len(inputs)} rows is larger than the service's limit of {max_batch}")
    first = inputs[0]
    for i, row in enumerate(inputs):
        if not isinstance(row, list):
            raise BadRequest(f"inputs[{i}] must be a list, got {type(row).__name__}")
        if info.kind == "float":
            if len(row) != info.features:
                raise BadRequest(f"inputs[{i}] has {len(row)} values; model {info.name} takes {info.features}")
            for j, x in enumerate(row):
                if not isinstance(x, (int, float)) or isinstance(x, bool):
                    raise BadRequest(f"inputs[{i}][{j}] must be a number, got {type(x).__name__}")
                if abs(x) > 3.0e38 or not math.isfinite(x):  # past float32's range (first: a huge int), NaN, inf
                    raise BadRequest(f"inputs[{i}][{j}] is {x}: only finite float32 numbers are accepted")
        else:
            if not 1 <= len(row) <= info.max_len or len(row) != len(first):
                want = f"1..{info.max_len} token ids, every row the same length ({len(first)})"
                raise BadRequest(f"inputs[{i}] has {len(row)} token ids; model {info.name} takes {want}")
            for j, x in enumerate(row):
                if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < info.vocab:
                    raise BadRequest(f"inputs[{i}][{j}] must be a token id in 0..{info.vocab - 1}, got {x!r}")
    return inputs


# ------------------------------------------------------------------------------------------------ the models
# SEED seeds torch's one global generator: two threads building at once (the chapter's concurrent requests checked
# against reference_outputs) drew from it in turn and got different weights (seen on an H100 machine's 16 cores).
_BUILD_LOCK = threading.Lock()


def build(name: str):
    """(module in eval mode with SEED's weights, its injection policy {block class: all-reduced layer names}).
    Thread-safe, and the caller's random state is left as it was."""
    import torch

    model_info(name)
    classes = _classes()
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        if name == "regressor":
            return classes["Regressor"]().eval(), {classes["MLP"]: (".down",)}
        return classes["TinyLM"]().eval(), {classes["Block"]: ("attn.o_proj", "mlp.down")}


SPLITS = {"columns": "weight and bias split (column-parallel)",
          "rows": "weight split, bias whole (row-parallel: added once, after the all-reduce)",
          "whole": "kept whole on every rank"}  # fmt: skip


def layers(name: str) -> list[dict]:
    """Every layer holding parameters, in order: name, tensor shapes, parameters and what AutoTP does with it under
    tensor parallelism (SPLITS). `build`'s policy decides: a Linear inside the policy's block is split, by rows when
    the policy all-reduces its output, else by columns; everything else stays whole."""
    from torch import nn

    module, policy = build(name)
    ((block, reduced),) = policy.items()
    blocks = [n for n, m in module.named_modules() if isinstance(m, block)]
    rows = []
    for path, layer in module.named_modules():
        params = list(layer.parameters(recurse=False))
        if not params:
            continue
        inner = next((path[len(b) + 1 :] for b in blocks if path.startswith(b + ".")), None)
        split = "whole"
        if inner is not None and isinstance(layer, nn.Linear):
            split = "rows" if any(f".{inner}".endswith("." + r.lstrip(".")) for r in reduced) else "columns"
        shapes = " + ".join("x".join(map(str, p.shape)) for p in params)
        rows.append({"layer": path, "type": type(layer).__name__, "shapes": shapes, "split": split,
                     "weight": layer.weight.numel(), "parameters": sum(p.numel() for p in params)})  # fmt: skip
    return rows


def params_per_rank(name: str, ranks: int) -> int:
    """Parameters one of `ranks` tensor-parallel ranks holds (ranks=1: the whole model), from `layers`."""
    split = {"columns": lambda r: r["parameters"] // ranks,
             "rows": lambda r: r["weight"] // ranks + r["parameters"] - r["weight"],
             "whole": lambda r: r["parameters"]}  # fmt: skip
    return sum(split[r["split"]](r) for r in layers(name))


def as_tensor(info: ModelInfo, rows: list[list]):
    import torch

    return torch.tensor(rows, dtype=torch.float32 if info.kind == "float" else torch.long)


def reference_outputs(name: str, rows: list[list]) -> list[list[float]]:
    """What one process computes with the whole model: the answers a served model must match."""
    import torch

    model, _ = build(name)
    with torch.no_grad():
        return model(as_tensor(model_info(name), rows)).tolist()


_CLASSES: dict[str, type] = {}


def _classes() -> dict[str, type]:
    """The torch module classes, defined on first use (torch imported lazily) and then kept: AutoTP matches the
    injection policy by class, so every build must use the same class objects."""
    if _CLASSES:
        return _CLASSES
    import torch
    from torch import nn
    from torch.nn import functional

    class MLP(nn.Module):
        def __init__(self, width: int, hidden: int, out: int, act: nn.Module):
            super().__init__()
            self.up, self.act, self.down = nn.Linear(width, hidden), act, nn.Linear(hidden, out)

        def forward(self, x):
            return self.down(self.act(self.up(x)))

    # The policy's block must be a child (AutoTP replaces inside children); its layer names are then ".<child>".
    class Regressor(nn.Module):
        def __init__(self, features: int = 10, hidden: int = 256):
            super().__init__()
            self.mlp = MLP(features, hidden, 1, nn.ReLU())

        def forward(self, x):
            return self.mlp(x)

    class Attention(nn.Module):
        def __init__(self, width: int, head_dim: int = 64):
            super().__init__()
            self.head_dim = head_dim  # heads per rank follow from the (split) projection width, never stored
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(width, width) for _ in range(3))
            self.o_proj = nn.Linear(width, width)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = (p(x) for p in (self.q_proj, self.k_proj, self.v_proj))
            heads = q.shape[-1] // self.head_dim
            q, k, v = (z.view(b, t, heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
            y = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.o_proj(y.transpose(1, 2).reshape(b, t, heads * self.head_dim))

    class Block(nn.Module):
        def __init__(self, width: int):
            super().__init__()
            self.ln1, self.attn = nn.LayerNorm(width), Attention(width)
            self.ln2, self.mlp = nn.LayerNorm(width), MLP(width, 4 * width, width, nn.GELU())

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class TinyLM(nn.Module):
        def __init__(self, vocab: int = 256, width: int = 128, layers: int = 2, max_len: int = 32):
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(max_len, width)
            self.blocks = nn.ModuleList(Block(width) for _ in range(layers))
            self.ln_f, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

        def forward(self, ids):
            x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln_f(x[:, -1]))  # the next token's logits

    _CLASSES.update(MLP=MLP, Regressor=Regressor, Block=Block, TinyLM=TinyLM)
    return _CLASSES
