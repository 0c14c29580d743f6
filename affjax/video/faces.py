"""Face detection, tracking of the main face, and the aligned crop the models were trained on.

Detector: OpenCV's Haar cascade `haarcascade_frontalface_default.xml` (Viola-Jones), and
`haarcascade_eye.xml` inside the face for the roll angle; both files ship inside the `opencv-python-headless`
wheel (`cv2.data.haarcascades`), so nothing is downloaded at run time.

Crop convention (Aff-Wild2 `cropped_aligned`, 112x112): a square centred on the detected face box, CROP_SCALE
times its side, rotated so the eyes are level (when both are found), resampled bilinearly to 112x112; the
models' own image size is then reached from that crop as the training pipeline reaches it from the released
JPEGs (`affjax.data.records.decode_face`: a bilinear resize).
"""
from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

CROP_SIZE = 112  # Aff-Wild2 cropped_aligned
CROP_SCALE = 1.4  # crop side / detector box side (the Haar box spans brows to mouth; the crops show the head)
NEAR_FACE_SIDE = 64  # pixels a followed face is searched at (the cascade's window: 24)
_FACE_CASCADE = 'haarcascade_frontalface_default.xml'
_EYE_CASCADE = 'haarcascade_eye.xml'


@dataclasses.dataclass(frozen=True)
class Face:
  box: np.ndarray  # [4] x0, y0, x1, y1 in frame pixels
  angle: float  # roll in degrees (the eyes' line against the horizontal), 0 when the eyes were not both found


class HaarDetector:
  """All frontal faces of a frame, searched on a copy scaled to `detect_height` pixels high: faces under about
  an eighth of the frame's height may be missed (a 60-pixel face in a 1280x720 frame was; raise
  `detect_height` for such videos, at a slower whole-frame search)."""

  def __init__(self, detect_height: int = 360, min_neighbors: int = 5):
    self.detect_height = detect_height
    self.min_neighbors = min_neighbors
    self._faces = cv2.CascadeClassifier(cv2.data.haarcascades + _FACE_CASCADE)
    self._eyes = cv2.CascadeClassifier(cv2.data.haarcascades + _EYE_CASCADE)
    if self._faces.empty() or self._eyes.empty():
      raise RuntimeError(f'cannot load the OpenCV cascades under {cv2.data.haarcascades}: reinstall '
                         'opencv-python-headless (<5: OpenCV 5 wheels no longer ship them)')

  def boxes(self, gray: np.ndarray, near: np.ndarray | None = None) -> np.ndarray:
    """`[K, 4]` face boxes (x0, y0, x1, y1) of a `[H, W]` uint8 frame; with `near` (a box [4]) only faces of
    0.7-1.4 times its size within one box side of it (the fast search that follows a face)."""
    scale = min(1.0, self.detect_height / gray.shape[0])
    offset, min_side, max_side = np.zeros(2), 24, 0
    if near is not None:
      side = max(near[2] - near[0], near[3] - near[1])
      lo = np.maximum(np.floor(near[:2] - side), 0).astype(int)
      hi = np.minimum(np.ceil(near[2:] + side), gray.shape[::-1]).astype(int)
      gray, offset = gray[lo[1]:hi[1], lo[0]:hi[0]], lo
      scale = min(scale, NEAR_FACE_SIDE / side)  # a large face needs no more pixels than a small one
      min_side, max_side = max(24, int(0.7 * side * scale)), int(1.4 * side * scale) + 1
    small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
    if min(small.shape) < min_side:
      return np.zeros((0, 4))
    found = self._faces.detectMultiScale(cv2.equalizeHist(small), scaleFactor=1.1, minNeighbors=self.min_neighbors,
                                         minSize=(min_side, min_side), maxSize=(max_side, max_side))
    if len(found) == 0:
      return np.zeros((0, 4))
    found = np.asarray(found, np.float64) / scale
    return np.concatenate([found[:, :2], found[:, :2] + found[:, 2:]], axis=1) + np.tile(offset, 2)

  def roll(self, gray: np.ndarray, box: np.ndarray) -> float:
    """The eyes' roll angle in degrees inside `box`, 0 unless exactly the two largest eyes lie one per side."""
    x0, y0, x1, y1 = np.round(box).astype(int)
    x0, y0 = max(x0, 0), max(y0, 0)
    roi = gray[y0:y0 + (y1 - y0) * 3 // 5, x0:x1]
    if roi.size == 0:
      return 0.0
    side = x1 - x0
    eyes = self._eyes.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=5, minSize=(side // 8, side // 8),
                                       maxSize=(side // 2, side // 2))
    if len(eyes) < 2:
      return 0.0
    eyes = sorted(eyes, key=lambda e: -e[2])[:2]
    (lx, ly), (rx, ry) = sorted((e[0] + e[2] / 2, e[1] + e[3] / 2) for e in eyes)
    if lx > side / 2 or rx < side / 2:
      return 0.0
    return math.degrees(math.atan2(ry - ly, rx - lx))


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Intersection over union of box `a` [4] with each of `b` [K, 4]."""
  w = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
  h = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
  area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
  return w * h / (area(a) + area(b) - w * h)


class MainFaceTracker:
  """Follows one person: the largest face first, then in each frame the face overlapping the last one most (IoU
  >= `min_iou`); when none does (the person left, or a cut), the largest face again. Other people are ignored."""

  def __init__(self, min_iou: float = 0.3):
    self.min_iou = min_iou
    self.last = None

  def __call__(self, boxes: np.ndarray) -> np.ndarray | None:
    if len(boxes) == 0:
      return None
    pick = None
    if self.last is not None:
      overlap = iou(self.last, boxes)
      pick = int(np.argmax(overlap)) if overlap.max() >= self.min_iou else None
    if pick is None:
      pick = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    self.last = boxes[pick]
    return self.last


def aligned_crop(frame: np.ndarray, face: Face, size: int = CROP_SIZE) -> np.ndarray:
  """The `[size, size, 3]` crop of `face` in `frame` by the crop convention (module docstring); pixels outside
  the frame repeat its border."""
  x0, y0, x1, y1 = face.box
  centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
  side = CROP_SCALE * max(x1 - x0, y1 - y0)
  rotation = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), face.angle, size / side)
  rotation[:, 2] += size / 2 - centre  # the face centre to the crop centre
  return cv2.warpAffine(frame, rotation, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def find_faces(frames: np.ndarray, detector: HaarDetector, tracker: MainFaceTracker) -> list[Face | None]:
  """The main face of each of `frames` [B, H, W, 3] (None where there is none), in order: searched near the
  tracked face, and over the whole frame when none is tracked or it was not found near."""
  out = []
  for frame in frames:
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    found = detector.boxes(gray, near=tracker.last) if tracker.last is not None else np.zeros((0, 4))
    box = tracker(found if len(found) else detector.boxes(gray))
    out.append(None if box is None else Face(box=box, angle=detector.roll(gray, box)))
  return out
