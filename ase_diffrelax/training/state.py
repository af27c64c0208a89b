"""Weights and optimiser state in and out of safetensors: no pickle, so a run folder or a
checkpoint from elsewhere can be loaded without executing anything."""
from __future__ import annotations

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
    """Copy a checkpoint's weights into ``net`` (same width; the same depth or deeper). Embedding rows
    of elements both know are copied; elements new to ``net`` start from the mean of the known rows,
    so a fine-tune begins from the checkpoint's chemistry rather than from noise. Blocks ``net`` has
    beyond the checkpoint's are appended after them with their updates zeroed (``grow_blocks``), so
    a deeper run starts near the checkpoint's function rather than from scratch. Returns what was done."""
    from ..core.checkpoint import load_model

    src = load_model(checkpoint, device="cpu")  # a tampered registered or saved checkpoint raises here
    if src.verified.startswith("unverified"):
        raise ValueError(f"--init {checkpoint}: {src.verified}; a fine-tune would pass it on as verified, so only a "
                         "registered checkpoint or one whose card carries its sha256s can start a run")
    a, b = src.net.config, net.config
    for key in ("features", "rbf", "cutoff", "time_features", "time_target", "schedule_T", "schedule_s"):
        if getattr(a, key) != getattr(b, key):
            raise ValueError(f"--init {checkpoint}: {key} is {getattr(a, key)} there but {getattr(b, key)} here; "
                             "the architecture must match (elements may differ, blocks may grow)")
    if b.blocks < a.blocks:
        raise ValueError(f"--init {checkpoint}: it has {a.blocks} blocks, this run {b.blocks}; "
                         "a run may add blocks to a checkpoint, not drop them")
    state = {k: v.clone() for k, v in src.net.state_dict().items() if not k.startswith("embedding.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    new_blocks = tuple(f"{kind}.{i}." for kind in ("interactions", "mixings", "norms") for i in range(a.blocks, b.blocks))
    if unexpected or any(not k.startswith(("embedding.", *new_blocks)) for k in missing):
        raise ValueError(f"--init {checkpoint}: weights do not fit ({missing}, {unexpected})")
    grow_blocks(net, a.blocks)
    old = src.net.embedding.weight.detach()
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
            "new_blocks": list(range(a.blocks, b.blocks))}


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
