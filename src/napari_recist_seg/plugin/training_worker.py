"""Former home of the training helpers, kept so existing imports keep working."""

from .curves import SERIES, CurveFigure, add_event  # noqa: F401
from .model_registry import MODEL_REGISTRY, ModelEntry, ModelRegistry, load_entry  # noqa: F401
from .training_job import (  # noqa: F401
    KIND_NAMES,
    MODEL_KINDS,
    TrainingFailed,
    TrainingJob,
    prepare_torch_import,
    run_training,
)
from .training_process import run_training_in_process  # noqa: F401
