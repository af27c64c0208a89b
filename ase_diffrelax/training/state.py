"""Weights and optimiser state in and out of safetensors: no pickle, so a run folder or a
checkpoint from elsewhere can be loaded without executing anything."""
from __future__ import annotations

import re

import torch

from ..core.model import Denoiser


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The optimiser state as (tensors for safetensors, JSON-able rest)."""
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state_keys": {}}
    for idx, st in sd["state"].items():
        meta["state_keys"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v
                meta["state_keys"][str(idx)][k] = "tensor"
            else:
                meta["state_keys"][str(idx)][k] = v
    return tensors, meta


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state = {}
    for idx, keys in meta["state_keys"].items():
        state[int(idx)] = {k: (tensors[f"{idx}.{k}"] if v == "tensor" else v) for k, v in keys.items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def init_from(net: Denoiser, checkpoint) -> dict:
    """Copy a checkpoint's weights into ``net`` (the same width or a whole multiple of it, the same
    depth or deeper). Embedding rows of elements both know are copied; elements new to ``net`` start
    from the mean of the known rows, so a fine-tune begins from the checkpoint's chemistry rather
    than from noise. Blocks ``net`` has beyond the checkpoint's are appended after them with their
    updates zeroed (``grow_blocks``), so a deeper run starts near the checkpoint's function rather
    than from scratch; a wider one starts from the checkpoint's channels repeated (``widen_state``).
    Returns what was done."""
    from ..core.checkpoint import load_model

    src = load_model(checkpoint, device="cpu")  # a tampered registered or saved checkpoint raises here
    if src.verified.startswith("unverified"):
        raise ValueError(f"--init {checkpoint}: {src.verified}; a fine-tune would pass it on as verified, so only a "
                         "registered checkpoint or one whose card carries its sha256s can start a run")
    a, b = src.net.config, net.config
    for key in ("rbf", "cutoff", "time_features", "time_target", "schedule_T", "schedule_s"):
        if getattr(a, key) != getattr(b, key):
            raise ValueError(f"--init {checkpoint}: {key} is {getattr(a, key)} there but {getattr(b, key)} here; "
                             "the architecture must match (elements may differ, blocks and width may grow)")
    if b.features % a.features or b.features < a.features:
        raise ValueError(f"--init {checkpoint}: features is {a.features} there but {b.features} here; a run may "
                         f"widen a checkpoint by a whole factor ({2 * a.features}, {3 * a.features}, ...), not narrow it")
    if b.features != a.features and a.features % 2:
        raise ValueError(f"--init {checkpoint}: an odd width ({a.features}) cannot be widened: the heads' "
                         "half-width layers would not repeat evenly")
    if b.blocks < a.blocks:
        raise ValueError(f"--init {checkpoint}: it has {a.blocks} blocks, this run {b.blocks}; "
                         "a run may add blocks to a checkpoint, not drop them")
    factor = b.features // a.features
    state = {k: v.clone() for k, v in src.net.state_dict().items()}
    if factor > 1:
        state = widen_state(state, a.features, factor, a.time_features)
    old = state.pop("embedding.weight")
    missing, unexpected = net.load_state_dict(state, strict=False)
    new_blocks = tuple(f"{kind}.{i}." for kind in ("interactions", "mixings", "norms") for i in range(a.blocks, b.blocks))
    if unexpected or any(not k.startswith(("embedding.", *new_blocks)) for k in missing):
        raise ValueError(f"--init {checkpoint}: weights do not fit ({missing}, {unexpected})")
    grow_blocks(net, a.blocks)
    new = net.embedding.weight.detach()
    with torch.no_grad():
        copied = []
        for row, z in enumerate(b.elements):
            if z in a.elements:
                new[row] = old[list(a.elements).index(z)]
                copied.append(int(z))
            else:
                new[row] = old.mean(0)
    return {"from": str(checkpoint), "copied_elements": copied,
            "new_elements": [int(z) for z in b.elements if z not in a.elements],
            "new_blocks": list(range(a.blocks, b.blocks)), "width_factor": factor}


def grow_blocks(net: Denoiser, first_new: int) -> None:
    """Zero the output layers of blocks ``first_new`` onwards: their message and update terms start
    at zero, so each passes its input on through its normalisation only (not an exact identity:
    the layer norm and the vector rescaling act once more)."""
    with torch.no_grad():
        for inter, mix in zip(net.interactions[first_new:], net.mixings[first_new:]):
            # phi's last layer, not W as well: with both zero neither would get a gradient
            for layer in (inter.phi[-1], mix.mlp[-1]):
                layer.weight.zero_()
                if layer.bias is not None:
                    layer.bias.zero_()


# How each parameter of a Denoiser of width F widens to k*F (Net2WiderNet: every channel repeated k
# times, its outgoing weights divided by k). "rows": the output dimension's chunks of F-wide
# channels (split / gate / three-way outputs are tiled chunk by chunk; 0 = output not widened).
# "cols": the input dimension's parts, each (size: a fraction of F, a count, "time" = the time
# embedding's width or "rest" = what is left of the input; repeated?).
_HALF, _FULL = 0.5, 1.0
_WIDEN_RULES = (
    (r"interactions\.\d+\.phi\.0\.", 1, ((_FULL, True),)),
    (r"interactions\.\d+\.phi\.2\.", 3, ((_FULL, True),)),
    (r"interactions\.\d+\.W\.", 3, (("rest", False),)),
    (r"mixings\.\d+\.UV\.", 2, ((_FULL, True),)),
    (r"mixings\.\d+\.mlp\.0\.", 1, ((_FULL, True), (_FULL, True))),
    (r"mixings\.\d+\.mlp\.2\.", 3, ((_FULL, True),)),
    (r"norms\.\d+\.", 1, ()),
    (r"time_head\.0\.", 1, ((_FULL, True),)),
    (r"time_head\.2\.", 0, ((_HALF, True),)),
    (r"noise_in\.", 1, ((_FULL, True), ("time", False))),
    (r"noise_head\.0\.W\.", 2, ((_FULL, True),)),
    (r"noise_head\.0\.mlp\.0\.", 1, ((_FULL, True), (_HALF, True))),
    (r"noise_head\.0\.mlp\.2\.", 2, ((_FULL, True),)),
    (r"noise_head\.1\.W\.", 0, ((_HALF, True),)),
    (r"noise_head\.1\.mlp\.0\.", 1, ((_HALF, True), (1, False))),
    (r"noise_head\.1\.mlp\.2\.", 0, ((_HALF, True),)),
)


def widen_state(state: dict, features: int, factor: int, time_features: int, jitter: float = 1e-2,
                seed: int = 0) -> dict:
    """A width-``features`` Denoiser's state dict for width ``factor * features`` that computes the
    same function: each invariant and vector channel is repeated ``factor`` times and the weights
    reading the repeats divided by ``factor``. Exact through the layer norms and the vector
    rescaling, which average over channels, so repeats leave them unchanged (zero-padded channels
    would not). Repeats that stay identical get identical gradients and never separate, so every
    widened weight gets Gaussian noise of ``jitter`` times its own spread (0: exact copy)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in state.items():
        if name == "embedding.weight":
            out[name] = w.repeat(1, factor)
            continue
        rule = next((r for r in _WIDEN_RULES if re.match(r[0], name)), None)
        if rule is None:
            out[name] = w  # buffers (rbf frequencies) and anything width-free
            continue
        _, chunks, cols = rule
        if chunks:
            w = torch.cat([c.repeat((factor,) + (1,) * (w.dim() - 1)) for c in w.chunk(chunks, 0)], 0)
        if w.dim() == 2:
            parts, start = [], 0
            for size, repeated in cols:
                n = (w.shape[1] - start if size == "rest" else time_features if size == "time"
                     else int(size * features) if isinstance(size, float) else size)
                part = w[:, start:start + n]
                start += n
                parts.append(part.repeat(1, factor) / factor if repeated else part)
            if start != w.shape[1]:
                raise ValueError(f"widen_state: {name} has {w.shape[1]} inputs, the rule reads {start}")
            w = torch.cat(parts, 1)
        if jitter and w.numel() > 1:
            w = w + jitter * w.std() * torch.randn(w.shape, generator=gen, dtype=w.dtype)
        out[name] = w
    return out
