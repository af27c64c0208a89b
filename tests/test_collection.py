"""Large collections: streamed, sharded, killed and resumed without losing or duplicating an entry."""
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from ase.db import connect
from ase.io import read

SMILES = ["CCO", "CC(=O)O", "CCN", "OCC(N)C=O", "CC#N", "COC", "CC(C)O", "C1CC1", "not_a_smiles", "C[Si](C)(C)C"]


def write_smi(path, n):
    path.write_text("".join(f"{SMILES[k % len(SMILES)]} mol{k}\n" for k in range(n)))


def cli(*args, model):
    return [sys.executable, "-m", "ase_diffrelax", "relax", *args, "--model", str(model.path), "--quiet",
            "--policy", "fixed:t0=5+stride=0"]


def indices(path):
    if str(path).endswith(".db"):
        return [int(r.input_index) for r in connect(path).select()]
    return [int(a.info["input_index"]) for a in read(path, ":")]


@pytest.mark.slow
@pytest.mark.parametrize("ext", [".db", ".extxyz"])
def test_kill_and_resume_loses_and_duplicates_nothing(tiny_model, tmp_path, ext):
    n = 300
    write_smi(tmp_path / "in.smi", n)
    out = tmp_path / f"out{ext}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cli(str(tmp_path / "in.smi"), "-o", str(out), "--chunk-size", "20", model=tiny_model),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    def recorded():  # what the output holds by its own bookkeeping (an extxyz may end in a torn chunk)
        if ext == ".db":
            try:
                return indices(out) if out.exists() else []
            except (TypeError, sqlite3.OperationalError):  # polled while the writer creates its tables
                return []
        from ase_diffrelax.files import read_jsonl

        return [i for r in read_jsonl(tmp_path / f"out{ext}.progress.jsonl") for i in r["indices"]]

    t0 = time.time()
    while time.time() - t0 < 120 and proc.poll() is None:
        if len(recorded()) >= 40:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = recorded()
    assert 0 < len(first) < n  # killed in the middle
    r = subprocess.run(cli(str(tmp_path / "in.smi"), "-o", str(out), "--chunk-size", "20", "--resume",
                           model=tiny_model), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    done = indices(out)
    assert sorted(done) == list(range(n))  # every entry exactly once
    rows = list(connect(out).select()) if ext == ".db" else read(out, ":")
    status = [(row.status if ext == ".db" else row.info["status"]) for row in rows]
    assert status.count("rejected") == 2 * (n // len(SMILES))  # the bad SMILES and the Si entries, with reasons
    assert set(status) <= {"converged", "max_steps", "diverged", "rejected"}


def test_shards_partition_the_input_and_merge(tiny_model, tmp_path):
    from ase_diffrelax.cli import main

    write_smi(tmp_path / "in.smi", 23)
    for i in range(3):
        assert subprocess.run(cli(str(tmp_path / "in.smi"), "-o", str(tmp_path / f"s{i}.db"), "--shard", f"{i}/3",
                                  model=tiny_model), capture_output=True).returncode == 0
    parts = [sorted(indices(tmp_path / f"s{i}.db")) for i in range(3)]
    assert parts[1] == list(range(1, 23, 3))
    assert main(["merge", *(str(tmp_path / f"s{i}.db") for i in range(3)), "-o", str(tmp_path / "all.db")]) == 0
    assert indices(tmp_path / "all.db") == list(range(23))
    # overlapping shards are refused
    assert main(["merge", str(tmp_path / "s0.db"), str(tmp_path / "all.db"), "-o", str(tmp_path / "x.db")]) == 2


def test_resume_never_touches_a_file_it_did_not_write(tmp_path, tiny_model):
    from ase_diffrelax.cli import main

    (tmp_path / "in.smi").write_text("CCO\n")
    precious = tmp_path / "mine.extxyz"
    precious.write_text("keep me")
    assert main(["relax", str(tmp_path / "in.smi"), "-o", str(precious), "--resume", "--model", str(tiny_model.path),
                 "--quiet"]) == 2
    assert precious.read_text() == "keep me"
    assert main(["relax", str(tmp_path / "in.smi"), "-o", str(precious), "--model", str(tiny_model.path),
                 "--quiet"]) == 2  # exists, no --resume
    assert precious.read_text() == "keep me"


def test_resume_accepts_a_policy_spec_written_before_options_were_added():
    """A 0.13 output's job recorded itp's spec without the options 0.14 added; parsed, both run
    the same policy, so --resume continues it; a policy that differs is still refused."""
    from ase_diffrelax.core.policy import make_policy
    from ase_diffrelax.workflows.collection import ResumeMismatch, _check_same_job

    now = {"input": "in.smi", "input_sha256": "ab", "shard": [0, 1], "model": "auto",
           "policy": make_policy("itp").spec(), "seed": 0, "conformer_seed": 0}
    old_spec = "+".join(p for p in now["policy"].split("+") if not p.startswith(("smooth_antithetic", "clean_t", "hold_gain")))
    assert old_spec != now["policy"]
    _check_same_job("out.sdf", {**now, "policy": old_spec}, now)
    with pytest.raises(ResumeMismatch, match="policy"):
        _check_same_job("out.sdf", {**now, "policy": make_policy("itp:stride=0.5").spec()}, now)
