"""polar_model.ema: the one causal EMA (gaze encoder and temporal summaries) against the
recursion written out step by step."""

import pytest
import torch

from polar_model.ema import ema


def ema_loop(x: torch.Tensor, a, dim: int) -> torch.Tensor:
    """f_0 = x_0, f_t = a f_{t-1} + (1 - a) x_t along ``dim``, one step at a time."""
    steps = x.unbind(dim)
    out = [steps[0]]
    for x_t in steps[1:]:
        out.append(a * out[-1] + (1 - a) * x_t)
    return torch.stack(out, dim)


@pytest.mark.parametrize("shape, dim", [((7,), 0), ((9, 2, 3), 0), ((2, 11, 1), 1),
                                        ((3, 4, 5, 6), 2), ((2, 5, 3), -1)])
def test_ema_equals_the_recursion_and_its_gradient(shape, dim):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    a = torch.tensor(0.83, dtype=torch.float64, requires_grad=True)
    got, want = ema(x, a, dim), ema_loop(x, a, dim)
    assert got.shape == x.shape and got.dtype == x.dtype
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    for u, v in zip(torch.autograd.grad(got, (x, a), g), torch.autograd.grad(want, (x, a), g)):
        torch.testing.assert_close(u, v)


def test_ema_with_a_plain_float_factor_and_one_step():
    x = torch.rand(6, 4)
    torch.testing.assert_close(ema(x, 0.5), ema_loop(x, 0.5, 0))
    torch.testing.assert_close(ema(x[:1], 0.9), x[:1])  # f_0 = x_0
