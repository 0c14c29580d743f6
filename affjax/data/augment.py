"""Image augmentation of whole windows: one draw of every factor per window, applied to all its frames."""
from __future__ import annotations

import numpy as np

_GREY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def color_jitter(faces: np.ndarray, rng: np.random.Generator, *, brightness: float, contrast: float,
                 saturation: float) -> np.ndarray:
  """torchvision-style ColorJitter of `faces` uint8 [T,H,W,3] with factors drawn once per window.

  Each factor is uniform in [1 - s, 1 + s]; applied in the order brightness, contrast, saturation:
  brightness scales; contrast blends with the mean grey level of each frame; saturation blends with the
  frame's grey image. Results are clipped to [0, 255].
  """
  factors = rng.uniform([1 - brightness, 1 - contrast, 1 - saturation],
                        [1 + brightness, 1 + contrast, 1 + saturation]).astype(np.float32)
  x = faces.astype(np.float32) * factors[0]
  x = np.clip(x, 0, 255)
  mean = (x @ _GREY).mean(axis=(1, 2), keepdims=True)[..., None]
  x = np.clip(factors[1] * x + (1 - factors[1]) * mean, 0, 255)
  grey = (x @ _GREY)[..., None]
  x = np.clip(factors[2] * x + (1 - factors[2]) * grey, 0, 255)
  return np.round(x).astype(np.uint8)


def augment_window(faces: np.ndarray, rng: np.random.Generator, *, brightness: float, contrast: float,
                   saturation: float, flip: bool) -> np.ndarray:
  """Colour jitter, then a horizontal flip with p = 0.5, both drawn once for the window [T,H,W,3]."""
  faces = color_jitter(faces, rng, brightness=brightness, contrast=contrast, saturation=saturation)
  if flip and rng.random() < 0.5:
    faces = faces[:, :, ::-1]
  return np.ascontiguousarray(faces)


def crop_window(faces: np.ndarray, size: int, rng: np.random.Generator | None = None) -> np.ndarray:
  """One `size x size` crop of every frame of `faces` [T,H,W,C]: at a random position drawn once for the window,
  or the centre one (offsets (H - size) // 2, (W - size) // 2) without `rng`."""
  h, w = faces.shape[1:3]
  if size > min(h, w):
    raise ValueError(f'crop of {size} pixels from {h}x{w} faces: set config.data.crop_size <= config.data.image_size')
  if rng is None:
    top, left = (h - size) // 2, (w - size) // 2
  else:
    top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
  return faces[:, top:top + size, left:left + size]
