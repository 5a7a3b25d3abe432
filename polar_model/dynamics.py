"""Recurrent polar dynamics: saccade-gated amplitude relaxation and phase advanced by the
Fourier shift theorem."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .compiled import compiled

PHASE_FLOOR = 1e-2  # squared norm below which the phase state is not renormalised


class PolarDynamics(nn.Module):
    """One recurrent state per pyramid level, pair and pixel, run oldest-first over time.

    State: amplitude ``A`` and unit phase ``(c, s) = (cos phi, sin phi)``. At step t:

    * rate ``lambda_t = (1 - q_t) lambda_fix + q_t lambda_sac`` (both learned, positive;
      without behaviour ``lambda_t = lambda_fix``), decay ``r_t = exp(-lambda_t dt)``;
    * predicted phase: the previous phase rotated by
      ``dphi_t = gamma_t 2 pi (k . v_t) dt + rho_t`` where ``k`` is the pair's frequency vector
      (cycles/pixel, from the filter) and ``v_t`` the effective retinal velocity in pixels/s
      of this level (``v_eff`` deg/s x ppd / 2^level, y flipped to rows): the phase change a
      translating image causes (no behaviour: ``dphi = 0``);
    * prediction error energy ``E_t = A_obs (1 - cos(phi_obs - phi_pred))``;
    * ``A_t = A_obs + (A_{t-1} - A_obs) r_t`` (relaxes to what is seen, faster in saccades);
    * ``phi_t``: the predicted unit phase blended with the observed one, weights
      ``r_t : 1 - r_t``, renormalised to unit length, ``(c, s) / max(|(c, s)|, 0.1)``. Phase
      thus accumulates across steps. Where the blend nearly cancels (predicted and observed
      phase opposite, ``r_t`` near 1/2) the phase is undefined and the state shrinks instead
      of being blown up to unit length: the old floor (1e-4) multiplied the gradient by up
      to 1e4 per such step, which overflowed to inf in training (demo seed 1, step 116).
    """

    def __init__(self, dt: float, lambda_fix: float, lambda_sac: float,
                 use_compile: bool = False):
        super().__init__()
        self.dt = dt
        self.use_compile = use_compile  # each step through torch.compile (:mod:`.compiled`)
        self._lam = nn.Parameter(torch.log(torch.expm1(torch.tensor([lambda_fix, lambda_sac]))))

    @property
    def rates(self) -> torch.Tensor:
        """(lambda_fix, lambda_sac) in 1/s."""
        return F.softplus(self._lam)

    def forward(self, amp, cos_o, sin_o, k_pix=None, q=None, v_pix=None, gamma=None, rho=None,
                state=None):
        """amp, cos_o, sin_o: observed polar responses ``[B, T, M, H, W]``, or sequences of T
        steps ``[B, M, H, W]``. Behaviour (all or none): ``k_pix`` [M, 2] cycles/pixel (x, y
        down), ``q`` [B, T, 1], ``v_pix`` [B, T, 2] pixels/s (x right, y down),
        ``gamma``/``rho`` [B, T, M]. ``state``: the (A, cos, sin) after the step before the
        first, to continue a sequence run in chunks; None starts from the first observation.
        Returns A, cos, sin, E, each a list over the T steps of ``[B, M, H, W]`` (lists, not
        stacked tensors: per-step slicing in a loop would cost a full-size gradient each),
        and the state after the last step.
        """
        amps, coss, sins = _steps(amp), _steps(cos_o), _steps(sin_o)
        B, T = amps[0].shape[0], len(amps)
        lam_fix, lam_sac = self.rates
        if q is None:
            decay = torch.exp(-lam_fix * self.dt).expand(B, T, 1)
            dphi = None
        else:
            decay = torch.exp(-((1 - q) * lam_fix + q * lam_sac) * self.dt)  # [B, T, 1]
            dphi = gamma * 2 * math.pi * (v_pix @ k_pix.t()) * self.dt + rho  # [B, T, M]
        decays = decay[..., None, None].unbind(1)
        if dphi is not None:
            cds = torch.cos(dphi)[..., None, None].unbind(1)
            sds = torch.sin(dphi)[..., None, None].unbind(1)
        As, cs, ss, es = [], [], [], []
        if state is None:
            A, c, s = amps[0], coss[0], sins[0]
            As, cs, ss, es = [A], [c], [s], [torch.zeros_like(A)]
        else:
            A, c, s = state
        step = compiled(_step) if self.use_compile else _step
        for t in range(len(As), T):
            rot = (cds[t], sds[t]) if dphi is not None else ()
            A, c, s, e = step(A, c, s, amps[t], coss[t], sins[t], decays[t], *rot)
            As.append(A)
            cs.append(c)
            ss.append(s)
            es.append(e)
        return As, cs, ss, es, (A, c, s)


def _step(A, c, s, ao, co, so, r, cd=None, sd=None):
    """One step of the dynamics on ``[B, M, H, W]`` maps: the state (A, c, s) rotated by
    (cd, sd) = (cos, sin) of dphi if given, the prediction error against the observation
    (ao, co, so), then relaxed towards it with decay ``r``. Returns (A, c, s, E)."""
    if cd is not None:
        c, s = c * cd - s * sd, s * cd + c * sd
    e = ao * (1 - (co * c + so * s))
    A = ao + (A - ao) * r
    c, s = c * r + co * (1 - r), s * r + so * (1 - r)
    inv = torch.rsqrt((c * c + s * s).clamp_min(PHASE_FLOOR))
    return A, c * inv, s * inv, e


def _steps(x) -> list[torch.Tensor]:
    """``[B, T, ...]`` -> T tensors ``[B, ...]``; a sequence of steps is kept as it is."""
    return list(x.unbind(1)) if torch.is_tensor(x) else list(x)
