import numpy as np

from polar_data.sessions.render import hold_last_valid, render_crops


def _dot_image(row, col, shape=(101, 121)):
    img = np.zeros(shape, np.uint8)
    img[row, col] = 255
    return img


def test_gaze_axes_x_right_y_up():
    # screen ppd 10; the dot sits 2 deg right and 1 deg up of the screen centre
    img = _dot_image(50 - 10, 60 + 20)
    crop = render_crops(img, np.array([[2.0, 1.0]]), screen_ppd=10, crop_px=11, crop_ppd=10)[0]
    assert np.unravel_index(crop.argmax(), crop.shape) == (5, 5)
    # looking at the centre, the dot appears right of and above the crop centre
    crop = render_crops(img, np.array([[1.6, 0.8]]), screen_ppd=10, crop_px=11, crop_ppd=10)[0]
    assert np.unravel_index(crop.argmax(), crop.shape) == (5 - 2, 5 + 4)


def test_subpixel_shift_interpolates():
    ramp = np.tile(np.arange(200, dtype=np.uint8), (50, 1))  # value = column
    g = np.array([[0.0, 0.0], [0.05, 0.0]])  # half a screen pixel at 10 ppd
    crops = render_crops(ramp, g, screen_ppd=10, crop_px=5, crop_ppd=10).astype(int)
    # half a pixel to the right rounds the interpolated ramp by +0.5 (banker's rint aside)
    assert np.abs(crops[1] - crops[0] - 0.5).max() <= 0.5
    assert (crops[1] >= crops[0]).all() and (crops[1] > crops[0]).any()


def test_outside_image_is_fill():
    crop = render_crops(np.zeros((10, 10), np.uint8), np.array([[100.0, 0.0]]), 10, 7, 10)
    assert (crop == 127).all()


def test_hold_last_valid():
    g = np.array([[np.nan, np.nan], [1, 1], [np.nan, np.nan], [3, 3]], np.float32)
    v = np.isfinite(g).all(1)
    np.testing.assert_array_equal(hold_last_valid(g, v), [[1, 1], [1, 1], [1, 1], [3, 3]])
