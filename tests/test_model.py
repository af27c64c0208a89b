import shutil

import pytest
import torch
from scipy.spatial.transform import Rotation

from ase_diffrelax.core.model import Denoiser, ModelConfig, molecule_pairs, remove_mean


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    numbers = torch.tensor([6, 1, 1, 1, 1, 8, 1, 1, 7, 6, 6, 1, 9])
    mol = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    x = torch.randn(len(numbers), 3, generator=g) * 1.2
    return numbers, x, mol


def test_pairs_are_all_intramolecular_ordered_pairs(batch):
    _, _, mol = batch
    i, j = molecule_pairs(mol, 3)
    got = set(zip(i.tolist(), j.tolist()))
    want = {(a, b) for a in range(len(mol)) for b in range(len(mol)) if a != b and mol[a] == mol[b]}
    assert got == want


def test_rotation_translation_equivariance_and_invariance(batch):
    torch.manual_seed(0)
    net = Denoiser(ModelConfig(features=32, blocks=3)).double()
    numbers, x, mol = batch
    x = x.double()
    t_hat, eps = net(numbers, x, mol, 3)
    R = torch.tensor(Rotation.random(random_state=1).as_matrix())
    shift = torch.tensor([3.0, -1.0, 7.5], dtype=torch.float64)
    t_hat2, eps2 = net(numbers, x @ R.T + shift, mol, 3)
    torch.testing.assert_close(t_hat2, t_hat, rtol=1e-9, atol=1e-9)  # invariant
    torch.testing.assert_close(eps2, eps @ R.T, rtol=1e-9, atol=1e-9)  # equivariant
    # a reflection too (PaiNN is E(3)-equivariant)
    P = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    _, eps3 = net(numbers, x @ P.T, mol, 3)
    torch.testing.assert_close(eps3, eps @ P.T, rtol=1e-9, atol=1e-9)
    # zero centre of geometry per molecule, and molecules do not see each other
    for m in range(3):
        assert eps[mol == m].sum(0).abs().max() < 1e-10
    x_far = x.clone()
    x_far[mol == 2] += 100.0
    _, eps4 = net(numbers, x_far, mol, 3)
    torch.testing.assert_close(eps4, eps, rtol=1e-9, atol=1e-9)


def test_permutation_equivariance(batch):
    net = Denoiser(ModelConfig(features=16, blocks=2)).double()
    numbers, x, mol = batch
    x = x.double()
    perm = torch.tensor([3, 1, 4, 0, 2, 7, 5, 6, 12, 10, 8, 11, 9])
    t1, e1 = net(numbers, x, mol, 3)
    t2, e2 = net(numbers[perm], x[perm], mol[perm], 3)
    torch.testing.assert_close(t2, t1)
    torch.testing.assert_close(e2, e1[perm])


def test_remove_mean():
    mol = torch.tensor([0, 0, 1, 1, 1])
    v = torch.randn(5, 3)
    out = remove_mean(v, mol, 2)
    assert out[:2].sum(0).abs().max() < 1e-6 and out[2:].sum(0).abs().max() < 1e-6


def test_unknown_element_flagged():
    net = Denoiser(ModelConfig(features=8, blocks=1))
    known = net.known(torch.tensor([1, 6, 16, 7, 200]))
    assert known.tolist() == [True, True, False, True, False]


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile needs a C++ compiler")
def test_compiled_blocks_give_the_eager_outputs_gradients_and_state_dict(batch):
    torch.manual_seed(0)
    cfg = ModelConfig(features=16, blocks=2, rbf=8, time_features=8)
    eager, compiled = Denoiser(cfg), Denoiser(cfg)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks()
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints keep their names
    numbers, x, mol = batch
    outs = []
    for net in (eager, compiled):
        t_hat, eps = net(numbers, x, mol, 3, t_frac=torch.tensor([0.01, 0.1, 0.5]))
        (t_hat.sum() + (eps**2).sum()).backward()
        outs.append((t_hat, eps, net.interactions[0].W.weight.grad))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_compile_without_a_cxx_compiler_says_so(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler"):
        Denoiser(ModelConfig(features=16, blocks=1, rbf=8, time_features=8)).compile_blocks()
