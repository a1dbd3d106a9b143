"""The seven FER-2013 emotions, in the dataset's label order 0..6."""

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
