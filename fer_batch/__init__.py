"""fer-batch: facial emotion recognition for image folders and videos, offline, in onnxruntime.

>>> from fer_batch import EmotionRecognizer, label_files
>>> faces = EmotionRecognizer().predict(image_bgr)        # list[Face]
>>> summary = label_files(["photos/"], "emotions.csv")    # RunSummary
"""

from fer_batch.classify import EmotionClassifier
from fer_batch.config import LabelConfig
from fer_batch.labels import EMOTIONS
from fer_batch.recognizer import EmotionRecognizer, Face
from fer_batch.runner import RunSummary, label_files

__all__ = ["EMOTIONS", "EmotionClassifier", "EmotionRecognizer", "Face", "LabelConfig", "RunSummary", "label_files"]
__version__ = "0.5.0"
