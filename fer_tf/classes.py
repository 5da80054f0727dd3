"""The seven ABAW expression classes and mappings from other label spaces."""

# ABAW 2020/2021 expression order (the header of Aff-Wild2's EXPR_Set files).
CLASS_NAMES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
NUM_CLASSES = len(CLASS_NAMES)

# ABAW 2022+ adds an eighth class with label 7.
OTHER_CLASS_NAME = "Other"

# ExpW label.lst: 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral.
# EXPW_TO_ABAW[expw_label] is the ABAW index (docs/datasets.md).
EXPW_TO_ABAW = (1, 2, 3, 4, 5, 6, 0)

# FER2013 image-folder class names -> ABAW index.
FER2013_FOLDERS = {
    "neutral": 0,
    "angry": 1,
    "disgust": 2,
    "fear": 3,
    "happy": 4,
    "sad": 5,
    "surprise": 6,
}
