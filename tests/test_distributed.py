"""torchrun with 2 CPU ranks (gloo) takes the same training steps as one process with the same global batch."""
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import small_molecules

ARGS = ["train", "--steps", "4", "--batch-size", "8", "--features", "16", "--blocks", "2", "--val-every", "2",
        "--ckpt-every", "1000", "--threads", "1", "--mmff-fraction", "0.4", "--val-molecules", "4", "--no-progress"]


def run(cmd, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


@pytest.mark.slow
def test_two_ranks_match_one_process_and_resume_with_one(tmp_path):
    from ase.io import write

    write(tmp_path / "mine.extxyz", small_molecules())
    data = ["--data", str(tmp_path / "mine.extxyz")]
    run([sys.executable, "-m", "ase_diffrelax", *ARGS, *data, "--out", str(tmp_path / "one")], tmp_path)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ase_diffrelax",
         *ARGS, *data, "--out", str(tmp_path / "two")], tmp_path)
    one = load_file(str(tmp_path / "one" / "state.safetensors"))
    two = load_file(str(tmp_path / "two" / "state.safetensors"))
    nets = [k for k in one if k.startswith("net.")]
    assert nets and set(one) == set(two)
    moved = max(float(np.abs(one[k] - load_file(str(tmp_path / "one" / "best.safetensors"))[k[4:]]).max())
                for k in nets if k[4:] in load_file(str(tmp_path / "one" / "best.safetensors")))
    assert moved > 0  # the weights changed during training, so agreement below is not trivial
    for k in nets:
        np.testing.assert_allclose(one[k], two[k], atol=2e-5, err_msg=k)
    # only rank 0 wrote: one log line per validation, a loadable checkpoint
    lines = (tmp_path / "two" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2
    from ase_diffrelax import load_model

    load_model(tmp_path / "two" / "best")
    # a run started with 2 ranks resumes with 1
    run([sys.executable, "-m", "ase_diffrelax", *[a if a != "4" else "6" for a in ARGS], *data,
         "--out", str(tmp_path / "two"), "--resume"], tmp_path)
    assert len((tmp_path / "two" / "log.jsonl").read_text().splitlines()) == 3
