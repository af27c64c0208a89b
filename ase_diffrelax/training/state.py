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
    """Copy a checkpoint's weights into ``net`` (same width and depth). Embedding rows of elements
    both know are copied; elements new to ``net`` start from the mean of the known rows, so a
    fine-tune begins from the checkpoint's chemistry rather than from noise. Returns what was done."""
    from ..core.checkpoint import load_model

    src = load_model(checkpoint, device="cpu")  # a tampered registered or saved checkpoint raises here
    if src.verified.startswith("unverified"):
        raise ValueError(f"--init {checkpoint}: {src.verified}; a fine-tune would pass it on as verified, so only a "
                         "registered checkpoint or one whose card carries its sha256s can start a run")
    a, b = src.net.config, net.config
    for key in ("features", "blocks", "rbf", "cutoff", "time_features", "time_target", "schedule_T", "schedule_s"):
        if getattr(a, key) != getattr(b, key):
            raise ValueError(f"--init {checkpoint}: {key} is {getattr(a, key)} there but {getattr(b, key)} here; "
                             "the architecture must match (elements may differ)")
    state = {k: v.clone() for k, v in src.net.state_dict().items() if not k.startswith("embedding.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("embedding.") for k in missing):
        raise ValueError(f"--init {checkpoint}: weights do not fit ({missing}, {unexpected})")
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
            "new_elements": [int(z) for z in b.elements if z not in a.elements]}
