"""Device choice as MACE/fairchem do it: CUDA when available unless told otherwise."""
import torch


def pick_device(device=None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
