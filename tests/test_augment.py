import numpy as np

from affjax.data import augment


def test_jitter_and_flip_drawn_once_per_window():
  rng = np.random.default_rng(0)
  frame = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
  window = np.stack([frame] * 5)
  for seed in range(8):
    out = augment.augment_window(window, np.random.default_rng(seed), brightness=0.2, contrast=0.2,
                                 saturation=0.2, flip=True)
    assert out.shape == window.shape and out.dtype == np.uint8
    for t in range(1, 5):  # identical frames stay identical: one draw for the whole window
      np.testing.assert_array_equal(out[t], out[0])


def test_brightness_only_scales():
  faces = np.full((2, 4, 4, 3), 100, np.uint8)
  rng = np.random.default_rng(3)
  factor = np.random.default_rng(3).uniform([0.8, 1.0, 1.0], [1.2, 1.0, 1.0])[0]
  out = augment.color_jitter(faces, rng, brightness=0.2, contrast=0.0, saturation=0.0)
  np.testing.assert_array_equal(out, np.round(np.clip(100 * np.float32(factor), 0, 255)).astype(np.uint8))
