"""Cut a detected face out of a frame the way FER-2013 frames its faces, as a 48x48 grey crop.

The classifier only works on faces framed like its training data: FER-2013's faces are centred, fill most of the
48x48 frame, and show little forehead. The constants below were measured, not guessed, by
``python -m training.calibrate_crop`` (see that module): FER images were enlarged x4, padded onto a grey canvas,
run through RetinaFace, and the detector's box and five landmarks were expressed in the 48x48 frame they came from.

- Box crop (default): a square around the box, shifted and scaled by the median relation between RetinaFace
  boxes and FER frames (Haar boxes have their own constants).
- Aligned crop (``--align``, needs landmarks): a similarity transform (rotation, scale, shift) that maps the five
  detected landmarks onto their median positions in FER frames, which also levels the eyes. FER-2013's faces were
  never rotated upright, so levelling moves crops away from what the model learnt: on 3,561 PublicTest faces
  rebuilt from canvases, the shipped model scores 69.50 % with box crops, 67.12 % with aligned crops, 70.57 % on
  the original 48x48 images (``python -m training.calibrate_crop --skip-fit --check 3589 --model
  models/emotion.onnx``).
"""

from __future__ import annotations

import cv2
import numpy as np

CROP_SIZE = 48
# Median landmark positions in a FER-2013 48x48 frame (x, y): right eye, left eye, nose, right and left mouth corner.
# Measured by `python -m training.calibrate_crop --count 3000` (RetinaFace found a face in 2978 of 3000).
FER_LANDMARKS = np.array([[15.29, 18.73], [32.86, 18.71], [23.96, 28.87], [17.20, 36.73], [31.23, 36.70]],
                         np.float32)
# The FER frame relative to a RetinaFace box (same run): side = BOX_SCALE * sqrt(w * h), centre = box centre +
# (BOX_SHIFT_X * w, BOX_SHIFT_Y * h).
BOX_SCALE = 1.112
BOX_SHIFT_X = -0.007
BOX_SHIFT_Y = -0.015
# Haar boxes relate to the FER frame differently; measured the same way (Haar found a face in 781 of 1000).
HAAR_BOX_SCALE = 1.038
HAAR_BOX_SHIFT_Y = 0.002


def to_grey(image: np.ndarray) -> np.ndarray:
    """A 2-D uint8 grey image from grey, BGR or BGRA uint8 input."""
    if image.ndim == 2:
        return image
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    if image.shape[2] == 1:
        return image[:, :, 0]
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def box_crop_matrix(box: np.ndarray, scale: float = BOX_SCALE, shift_x: float = BOX_SHIFT_X,
                    shift_y: float = BOX_SHIFT_Y) -> np.ndarray:
    """2x3 affine matrix from frame pixels to the 48x48 crop, from a box (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    width, height = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    side = scale * float(np.sqrt(width * height))
    center_x = (x1 + x2) / 2 + shift_x * width
    center_y = (y1 + y2) / 2 + shift_y * height
    zoom = CROP_SIZE / side
    return np.array([[zoom, 0.0, CROP_SIZE / 2 - zoom * center_x],
                     [0.0, zoom, CROP_SIZE / 2 - zoom * center_y]], np.float32)


def aligned_crop_matrix(landmarks: np.ndarray) -> np.ndarray | None:
    """2x3 similarity matrix mapping the five landmarks onto FER_LANDMARKS; None when they cannot be fitted."""
    if not np.isfinite(landmarks).all():
        return None
    matrix, _ = cv2.estimateAffinePartial2D(landmarks.astype(np.float32), FER_LANDMARKS, method=cv2.LMEDS)
    return None if matrix is None else matrix.astype(np.float32)


def crop_face(grey: np.ndarray, box: np.ndarray, landmarks: np.ndarray | None = None, align: bool = True,
              framing: str = "retinaface") -> np.ndarray:
    """The 48x48 uint8 crop of one face from a grey frame.

    ``framing`` says how the box relates to a FER frame: ``retinaface`` (aligned on the landmarks when asked and
    possible, else the calibrated box relation), ``haar`` (Haar's calibrated box relation) or ``whole`` (the box
    is already a FER-style face: it is only resized).
    """
    if framing == "whole":
        matrix = box_crop_matrix(box, scale=1.0, shift_x=0.0, shift_y=0.0)
    elif framing == "haar":
        matrix = box_crop_matrix(box, scale=HAAR_BOX_SCALE, shift_y=HAAR_BOX_SHIFT_Y)
    else:
        matrix = aligned_crop_matrix(landmarks) if align and landmarks is not None else None
        if matrix is None:
            matrix = box_crop_matrix(box)
    # Shrinking a big face in one bilinear step aliases: area-average just the face's region first, as FER's own
    # downscales did, then warp the small copy.
    zoom = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    factor = int(0.5 / zoom) if zoom > 0 else 1
    if factor >= 2:
        grey, matrix = _shrink_region(grey, matrix, factor)
    return cv2.warpAffine(grey, matrix, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def _shrink_region(grey: np.ndarray, matrix: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut the region the crop samples from, shrink it ``factor`` times, and return it with the adjusted matrix."""
    inverse = cv2.invertAffineTransform(matrix)
    corners = np.array([[0, 0, 1], [CROP_SIZE, 0, 1], [0, CROP_SIZE, 1], [CROP_SIZE, CROP_SIZE, 1]], np.float32)
    source = corners @ inverse.T
    height, width = grey.shape[:2]
    x0 = int(np.clip(np.floor(source[:, 0].min()) - factor, 0, width - 1))
    y0 = int(np.clip(np.floor(source[:, 1].min()) - factor, 0, height - 1))
    x1 = int(np.clip(np.ceil(source[:, 0].max()) + factor, x0 + 1, width))
    y1 = int(np.clip(np.ceil(source[:, 1].max()) + factor, y0 + 1, height))
    region = grey[y0:y1, x0:x1]
    small = cv2.resize(region, (max(1, region.shape[1] // factor), max(1, region.shape[0] // factor)),
                       interpolation=cv2.INTER_AREA)
    step_x, step_y = region.shape[1] / small.shape[1], region.shape[0] / small.shape[0]
    # A small pixel's centre lies at step * xy + (step - 1) / 2 + offset in the frame: fold that into the matrix.
    adjusted = np.empty_like(matrix)
    adjusted[:, 0] = matrix[:, 0] * step_x
    adjusted[:, 1] = matrix[:, 1] * step_y
    offset = np.array([x0 + (step_x - 1) / 2, y0 + (step_y - 1) / 2], np.float32)
    adjusted[:, 2] = matrix[:, :2] @ offset + matrix[:, 2]
    return small, adjusted
