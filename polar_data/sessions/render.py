"""Render gaze-contingent crops (retinal coordinates) from full-screen images.

Geometry (also stated in the README):
* The screen image is centred on gaze (0, 0); an image pixel spans ``1 / screen_ppd`` degrees.
  Screen position (X, Y) degrees (x right, y up) sits at image column ``cx + X * screen_ppd``
  and row ``cy - Y * screen_ppd`` with ``(cy, cx)`` the image's centre in pixel-centre units.
* Crop pixel (row r, col c) shows the screen at gaze + ((c - c0) / crop_ppd, (r0 - r) / crop_ppd)
  with ``(r0, c0)`` the crop centre, so row 0 is the top of the crop.
* Sampling is bilinear (sub-pixel gaze moves the crop smoothly); outside the image the
  screen's grey ``fill`` is shown.
"""

from __future__ import annotations

import numpy as np


def hold_last_valid(eyepos: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """float32 [T, 2]: gaze with invalid bins replaced by the last valid gaze (the first valid
    gaze before any), as a gaze-contingent display holds its window during tracking loss."""
    eyepos = np.asarray(eyepos, dtype=np.float32)
    ok = np.asarray(valid, dtype=bool) & np.isfinite(eyepos).all(axis=1)
    if not ok.any():
        return np.zeros_like(eyepos)
    idx = np.where(ok, np.arange(len(ok)), -1)
    idx = np.maximum.accumulate(idx)
    idx[idx < 0] = np.flatnonzero(ok)[0]
    return eyepos[idx]


def render_crops(
    image: np.ndarray,
    gaze_deg: np.ndarray,
    screen_ppd: float,
    crop_px: int,
    crop_ppd: float,
    fill: float = 127.0,
    chunk: int = 256,
) -> np.ndarray:
    """Crops of ``image`` centred on each gaze sample.

    Args:
        image: uint8 [Hs, Ws] grayscale screen image.
        gaze_deg: float [F, 2] gaze in degrees (x right, y up); must be finite.
        screen_ppd: image pixels per degree on the screen.
        crop_px: output crop side in pixels.
        crop_ppd: output crop pixels per degree.
        fill: grey level shown outside the image.
    Returns:
        uint8 [F, crop_px, crop_px], row 0 at the top.
    """
    gaze = np.asarray(gaze_deg, dtype=np.float64)
    if gaze.ndim != 2 or gaze.shape[1] != 2:
        raise ValueError(f"gaze_deg must be [F, 2], got {gaze.shape}")
    if not np.isfinite(gaze).all():
        raise ValueError("gaze_deg must be finite (hold the last valid gaze during blinks)")
    img = np.asarray(image, dtype=np.float32)
    Hs, Ws = img.shape
    # pad by one pixel of fill so bilinear reads at the border fall on grey
    padded = np.full((Hs + 2, Ws + 2), fill, dtype=np.float32)
    padded[1:-1, 1:-1] = img
    flat = padded.ravel()
    cy, cx = (Hs - 1) / 2.0, (Ws - 1) / 2.0
    off = (np.arange(crop_px) - (crop_px - 1) / 2.0) / crop_ppd  # degrees
    out = np.empty((len(gaze), crop_px, crop_px), dtype=np.uint8)
    for s in range(0, len(gaze), chunk):
        g = gaze[s : s + chunk]
        cols = cx + (g[:, 0, None] + off[None, :]) * screen_ppd  # [F, P]
        rows = cy - (g[:, 1, None] - off[None, :]) * screen_ppd  # [F, P] (row index grows down)
        # +1 for the padding; clamp to the padded frame (beyond it is all fill)
        cols = np.clip(cols + 1.0, 0.0, Ws + 1.0 - 1e-6)
        rows = np.clip(rows + 1.0, 0.0, Hs + 1.0 - 1e-6)
        c0 = np.floor(cols).astype(np.int64)
        r0 = np.floor(rows).astype(np.int64)
        fc = (cols - c0).astype(np.float32)[:, None, :]
        fr = (rows - r0).astype(np.float32)[:, :, None]
        c1 = np.minimum(c0 + 1, Ws + 1)
        r1 = np.minimum(r0 + 1, Hs + 1)
        W2 = Ws + 2
        i00 = r0[:, :, None] * W2 + c0[:, None, :]
        i01 = r0[:, :, None] * W2 + c1[:, None, :]
        i10 = r1[:, :, None] * W2 + c0[:, None, :]
        i11 = r1[:, :, None] * W2 + c1[:, None, :]
        top = flat[i00] * (1 - fc) + flat[i01] * fc
        bot = flat[i10] * (1 - fc) + flat[i11] * fc
        val = top * (1 - fr) + bot * fr
        out[s : s + chunk] = np.clip(np.rint(val), 0, 255).astype(np.uint8)
    return out
