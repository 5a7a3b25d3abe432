"""Recurrent polar dynamics: saccade-gated amplitude relaxation and phase advanced by the
Fourier shift theorem, run over one pyramid level and pooled by the readout masks.

Two implementations of the same function: :class:`PolarLevel`, whose backward pass is
written out by hand (the default: each step is a few dozen in-place operations on
``[B, M, H, W]`` maps forward and back, and only eight maps per step are kept for it), and
:func:`polar_level_autograd`, the plain step-by-step autograd reference it is tested
against (``autograd_dynamics: true``; about twice the time and three times the memory).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from polar_model.polar_decomposition import POLAR_EPS, at_least_float32, polar_decompose
from polar_model.readout import pool

PHASE_FLOOR = 1e-2  # squared norm below which the phase state is not renormalised
# the renormalisation factor 1 / sqrt(PHASE_FLOOR) where it is clamped (its gradient is
# then zero), less a relative 1e-6 for float32 rounding
_INV_CLAMPED = (1 - 1e-6) * PHASE_FLOOR ** -0.5


class PolarDynamics(nn.Module):
    """One recurrent state per pyramid level, pair and pixel, run oldest-first over time.

    State: amplitude ``A`` and unit phase ``(c, s) = (cos phi, sin phi)``, starting from
    the first observation. At step t, from the observed amplitude and phase of the
    quadrature responses (``A_obs = |even + i odd|``,
    :func:`~polar_model.polar_decomposition.polar_decompose`):

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
      of being blown up to unit length: a smaller floor multiplies the gradient by up to
      ``1 / sqrt(floor)`` per such step, which overflows in training.

    The state maps are never returned at full resolution: ``A``, ``A cos phi``,
    ``A sin phi`` and ``E`` come out pooled by the readout masks (and the observed
    amplitude too, which the summaries need), see :meth:`forward`.
    """

    def __init__(self, dt: float, lambda_fix: float, lambda_sac: float,
                 use_autograd: bool = False):
        super().__init__()
        self.dt = dt
        self.use_autograd = use_autograd  # the step-by-step autograd reference
        self._lam = nn.Parameter(torch.log(torch.expm1(torch.tensor([lambda_fix, lambda_sac]))))

    @property
    def rates(self) -> torch.Tensor:
        """(lambda_fix, lambda_sac) in 1/s."""
        return F.softplus(self._lam)

    def forward(self, y, weights, first: int = 0, means: bool = False,
                k_pix=None, q=None, v_pix=None, gamma=None, rho=None):
        """``y``: one level's quadrature responses, time first ``[T, B, 2M, H, W]``, the M
        even responses then the M odd ones (the filter bank's convolution output, viewed);
        ``weights`` ``[H * W, K]`` (:func:`~polar_model.readout.pool`'s; an identity gives
        full-resolution maps); behaviour (all or none): ``k_pix`` [M, 2] cycles/pixel (x, y
        down), ``q`` [B, T, 1], ``v_pix`` [B, T, 2] pixels/s (x right, y down),
        ``gamma``/``rho`` [B, T, M].

        Returns, as one tuple of eleven: the even and odd responses and the observed
        amplitude pooled, each ``[T, B, M, K]``; ``A``, ``A cos phi``, ``A sin phi`` and
        ``E`` of steps ``first ..`` pooled, each ``[T - first, B, M, K]``; with ``means``
        the spatial means of those four at the steps before ``first``, each
        ``[first, B, M]``, else ``[0, B, M]``.
        """
        lam_fix, lam_sac = self.rates
        if q is None:
            decay = torch.exp(-lam_fix * self.dt).expand(y.shape[:2])
            cd = sd = None
        else:
            decay = torch.exp(-((1 - q) * lam_fix + q * lam_sac) * self.dt)[..., 0].t()
            dphi = gamma * 2 * math.pi * (v_pix @ k_pix.t()) * self.dt + rho  # [B, T, M]
            cd, sd = torch.cos(dphi).transpose(0, 1), torch.sin(dphi).transpose(0, 1)
        level = polar_level_autograd if self.use_autograd else PolarLevel.apply
        return level(y, decay, cd, sd, weights, first, means)


def polar_level_autograd(y, decay, cd, sd, weights, first: int, means: bool):
    """:meth:`PolarDynamics.forward` after the drive, step by step through autograd (the
    reference :class:`PolarLevel` is tested against). ``decay`` [T, B]; ``cd``, ``sd``
    (cos, sin of the phase advance) [T, B, M] or None."""
    y = at_least_float32(y)
    even, odd = y.chunk(2, dim=2)
    amp, co, so = polar_decompose(even, odd)
    A, c, s, E = [amp[0]], [co[0]], [so[0]], [torch.zeros_like(amp[0])]
    for t in range(1, amp.shape[0]):
        r = decay[t, :, None, None, None]
        cp, sp = c[-1], s[-1]
        if cd is not None:
            cdt, sdt = cd[t, ..., None, None], sd[t, ..., None, None]
            cp, sp = cp * cdt - sp * sdt, sp * cdt + cp * sdt
        E.append(amp[t] * (1 - (co[t] * cp + so[t] * sp)))
        A.append(amp[t] + (A[-1] - amp[t]) * r)
        bc, bs = cp * r + co[t] * (1 - r), sp * r + so[t] * (1 - r)
        inv = torch.rsqrt((bc * bc + bs * bs).clamp_min(PHASE_FLOOR))
        c.append(bc * inv)
        s.append(bs * inv)
    A, c, s, E = (torch.stack(x) for x in (A, c, s, E))
    state = (A, A * c, A * s, E)
    early = first if means else 0
    return (pool(even, weights), pool(odd, weights), pool(amp, weights),
            *(pool(x[first:], weights) for x in state),
            *(x[:early].mean((-2, -1)) for x in state))


def _vdot(x: torch.Tensor, y: torch.Tensor, keep: int) -> torch.Tensor:
    """Sum of ``x * y`` over all but the first ``keep`` dimensions."""
    return torch.linalg.vecdot(x.flatten(keep), y.flatten(keep))


class PolarLevel(torch.autograd.Function):
    """:func:`polar_level_autograd` with its backward pass written out (same arguments and
    outputs; float32 or float64). Forward keeps, per step, the observed amplitude and unit
    phase, the state ``A, c, s``, its renormalisation factor and ``E`` (and the input);
    backward runs the steps newest-first with the state's adjoints carried, each step's
    full-resolution gradients made from the pooled ones as it needs them."""

    @staticmethod
    def forward(ctx, y, decay, cd, sd, weights, first: int, means: bool):
        ctx.dtypes = (y.dtype, decay.dtype, weights.dtype)
        with torch.autocast(y.device.type, enabled=False):
            y, w = at_least_float32(y).contiguous(), at_least_float32(weights)
            T, B, M2, H, W = y.shape
            M = M2 // 2
            e, o = y[:, :, :M], y[:, :, M:]
            inv0 = torch.rsqrt((e * e).addcmul_(o, o).add_(POLAR_EPS**2))
            amp, co, so = torch.reciprocal(inv0), e * inv0, o * inv0
            del inv0
            A, c, s, inv, E = (torch.empty_like(amp) for _ in range(5))
            A[0], c[0], s[0], E[0], inv[0] = amp[0], co[0], so[0], 0.0, 1.0
            r = at_least_float32(decay)[..., None, None, None]   # [T, B, 1, 1, 1]
            rot = cd is not None
            if rot:
                cd, sd = (at_least_float32(x)[..., None, None] for x in (cd, sd))
            for t in range(1, T):
                cr, sr = _rotate(c[t - 1], s[t - 1], cd[t], sd[t]) if rot else (
                    c[t - 1], s[t - 1])
                dot = (co[t] * cr).addcmul_(so[t], sr)
                torch.addcmul(amp[t], amp[t], dot, value=-1, out=E[t])
                torch.lerp(amp[t], A[t - 1], r[t], out=A[t])
                bc, bs = torch.lerp(co[t], cr, r[t]), torch.lerp(so[t], sr, r[t])
                torch.rsqrt((bc * bc).addcmul_(bs, bs).clamp_min_(PHASE_FLOOR), out=inv[t])
                torch.mul(bc, inv[t], out=c[t])
                torch.mul(bs, inv[t], out=s[t])
            p_eo = pool(y, w)
            early = first if means else 0
            state = (A, A * c, A * s, E)
            out = (p_eo[:, :, :M].contiguous(), p_eo[:, :, M:].contiguous(), pool(amp, w),
                   *(pool(x[first:], w) for x in state),
                   *(x[:early].mean((-2, -1)) for x in state))
        ctx.save_for_backward(y, amp, co, so, A, c, s, inv, E, w, r,
                              *((cd, sd) if rot else ()))
        ctx.first, ctx.means, ctx.rot = first, means, rot
        return out

    @staticmethod
    def backward(ctx, g_even, g_odd, g_amp, *grads):
        y, amp, co, so, A, c, s, inv, E, w, r, *rot = ctx.saved_tensors
        first, means = ctx.first, ctx.means
        T, B, M, H, W = amp.shape
        with torch.autocast(y.device.type, enabled=False):
            g_amp, late, early = g_amp.contiguous(), grads[:4], grads[4:]
            # the masks' gradient, [K, H W] (this orientation is the faster matmul)
            g_eo = torch.cat([g_even, g_odd], 2)                       # [T, B, 2M, K]
            g_wt = g_eo.flatten(0, 2).t() @ y.view(-1, H * W)
            g_wt += g_amp.flatten(0, 2).t() @ amp.view(-1, H * W)
            for g, x in zip(late, (A, c, s, E)):
                x = x[first:] * A[first:] if x is c or x is s else x[first:]
                g_wt += g.flatten(0, 2).t() @ x.reshape(-1, H * W)
            wt = w.t().contiguous()
            # steps first ..: the amplitude's and the state's pooled gradients side by side,
            # one matmul per step makes all five full-resolution ones
            g_late = torch.cat([g_amp[first:], *late], 2)              # [T - first, B, 5M, K]

            def full(t):
                """Step t's full-resolution gradients of the pooled observed amplitude and
                of A, A cos, A sin, E (these None before ``first`` without ``means``)."""
                if t >= first:
                    return (g_late[t - first] @ wt).view(B, 5, M, H, W).unbind(1)
                g = (g_amp[t] @ wt).view(B, M, H, W)
                if means:
                    return g, *((m[t] / (H * W))[..., None, None] for m in early)
                return g, None, None, None, None

            gy = torch.empty_like(y)
            g_decay = amp.new_zeros(T, B)
            if rot:
                cd, sd = rot
                g_cd, g_sd = amp.new_zeros(T, B, M), amp.new_zeros(T, B, M)
            carried = None  # the adjoints of (A, c, s) from step t + 1
            for t in range(T - 1, -1, -1):
                # total gradients of the state (A, c, s) after step t
                gao, *gs = full(t)
                if gs[0] is not None:
                    gA, gAc, gAs, gE = gs
                    GA = torch.addcmul(gA, gAc, c[t]).addcmul_(gAs, s[t])
                    Gc, Gs = gAc * A[t], gAs * A[t]
                    if carried is not None:
                        GA.add_(carried[0])
                        Gc.add_(carried[1])
                        Gs.add_(carried[2])
                elif carried is not None:
                    (GA, Gc, Gs), gE = carried, None
                else:
                    (GA, Gc, Gs), gE = (torch.zeros_like(amp[t]) for _ in range(3)), None
                if t == 0:  # the state starts as the first observation
                    gao += GA
                    gco, gso = Gc, Gs
                else:
                    # (c, s) = (bc, bs) inv, inv = 1 / max(|(bc, bs)|, sqrt(PHASE_FLOOR))
                    d = (Gc * c[t]).addcmul_(Gs, s[t])
                    d.masked_fill_(inv[t] >= _INV_CLAMPED, 0.0)
                    gbc = torch.addcmul(Gc, d, c[t], value=-1).mul_(inv[t])
                    gbs = torch.addcmul(Gs, d, s[t], value=-1).mul_(inv[t])
                    # (bc, bs) = lerp(observed, predicted, r)
                    rt = r[t]
                    cp, sp = c[t - 1], s[t - 1]
                    cr, sr = _rotate(cp, sp, cd[t], sd[t]) if rot else (cp, sp)
                    gco, gso = gbc * (1 - rt), gbs * (1 - rt)
                    gcr, gsr = gbc * rt, gbs * rt
                    g_decay[t] = (_vdot(gbc, cr, 1) - _vdot(gbc, co[t], 1)
                                  + _vdot(gbs, sr, 1) - _vdot(gbs, so[t], 1)
                                  + _vdot(GA, A[t - 1], 1) - _vdot(GA, amp[t], 1))
                    # A = lerp(observed amplitude, A_prev, r)
                    gao.addcmul_(GA, 1 - rt)
                    GA = GA * rt
                    if gE is not None:  # E = amp (1 - (co cr + so sr)), the bracket E / amp
                        gEa = gE * amp[t]
                        gao.addcmul_(gE, E[t] / amp[t])
                        gco.addcmul_(gEa, cr, value=-1)
                        gso.addcmul_(gEa, sr, value=-1)
                        gcr.addcmul_(gEa, co[t], value=-1)
                        gsr.addcmul_(gEa, so[t], value=-1)
                    if rot:  # (cr, sr) = (c, s) rotated by (cd, sd)
                        cdt, sdt = cd[t], sd[t]
                        g_cd[t] = _vdot(gcr, cp, 2) + _vdot(gsr, sp, 2)
                        g_sd[t] = _vdot(gsr, cp, 2) - _vdot(gcr, sp, 2)
                        gcr, gsr = (gcr * cdt).addcmul_(gsr, sdt), (gsr * cdt).addcmul_(
                            gcr, sdt, value=-1)
                    carried = (GA, gcr, gsr)
                # amp = |(e, o)|, (co, so) = (e, o) / amp; plus the pooled e, o's own
                dd = (gco * co[t]).addcmul_(gso, so[t]).div_(amp[t])
                gco.div_(amp[t]).addcmul_(dd, co[t], value=-1).addcmul_(gao, co[t])
                gso.div_(amp[t]).addcmul_(dd, so[t], value=-1).addcmul_(gao, so[t])
                torch.matmul(g_eo[t], wt, out=gy[t].view(B, 2 * M, H * W))
                gy[t, :, :M] += gco
                gy[t, :, M:] += gso
        dy, dr, dw = ctx.dtypes
        return (gy.to(dy), g_decay.to(dr), g_cd if rot else None, g_sd if rot else None,
                g_wt.t().to(dw), None, None)


def _rotate(c, s, cd, sd):
    """The unit phase (c, s) rotated by the angle whose (cos, sin) is (cd, sd)."""
    return (c * cd).addcmul_(s, sd, value=-1), (s * cd).addcmul_(c, sd)
