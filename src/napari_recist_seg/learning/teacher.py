"""Training targets drawn by a trained model (a *teacher*) from each lesion's RECIST.

A prompted model that has learnt where the image's edges lie draws masks closer to the
lesions than the quarter-ellipse it was trained on; training another model towards those
masks passes that on to a model that needs no RECIST at prediction. The teacher predicts
every training and validation lesion (flip-averaged, as a self-training round does) and its
masks are kept within what each RECIST allows (``core.training_targets.self_training_target``),
so the student still learns from the RECIST alone: no true mask is read.

The teacher must see the lesions as the student's data set shows them: same input side,
whole images or the same crops, same channels and normalisation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from .self_training import RoundTargets, refine_targets

__all__ = ["GEOMETRY_KEYS", "check_resume_teacher", "check_teacher", "teacher_targets"]

#: Preprocessing entries that place a lesion in the network's input; a teacher's must equal
#: the data set's.
GEOMETRY_KEYS = ("mode", "size", "normalise", "channel_axis", "margin", "field_of_view_mm",
                 "field_of_view_px", "window", "context")


def _described(pre: dict) -> str:
    if pre.get("mode") == "crops":
        side = pre.get("field_of_view_px")
        where = ("patches twice each lesion's long axis" if side is None
                 else f"{float(side):g} px patches")
    else:
        where = "whole images"
    return f"{pre.get('size')} px inputs of {where}"


def check_teacher(teacher, dataset, name: str = "teacher") -> None:
    """Raise ValueError, naming ``name``, when ``teacher`` cannot draw ``dataset``'s targets.

    Parameters
    ----------
    teacher : torch.nn.Module
        A model as ``inference.load_model`` returns it.
    dataset : LesionDataset
        The data set whose targets it would draw.
    name : str
        How the error names the teacher (its path).
    """
    theirs = dict(getattr(teacher, "preprocessing", None) or {})
    ours = dict(getattr(dataset, "preprocessing", None) or {})
    # Entries a checkpoint of an older version lacks are not held against it.
    differ = [k for k in GEOMETRY_KEYS
              if (k in ("mode", "size") or (k in theirs and k in ours))
              and theirs.get(k) != ours.get(k)]
    if differ:
        raise ValueError(
            f"teacher {name} was trained on {_described(theirs)}, these lesions are "
            f"{_described(ours)} ({', '.join(differ)} differ): train the teacher with the "
            f"same --size and --crop (or --lesion-crops) as the models it teaches")
    channels = int(teacher.config.get("in_channels", dataset.n_channels))
    if channels != dataset.n_channels:
        raise ValueError(f"teacher {name} takes {channels}-channel images, these lesions "
                         f"have {dataset.n_channels}")


def teacher_targets(teacher, data, *, batch_size: int = 16, name: str = "teacher",
                    progress: Callable[[int, int], None] | None = None,
                    stop: Callable[[], bool] | None = None):
    """The training and validation sets of ``data`` with targets drawn by ``teacher``.

    Parameters
    ----------
    teacher : torch.nn.Module
        A trained model (``inference.load_model``), usually a prompted one.
    data : PreparedData
        Training and validation sets (``preparation.prepare_whole_images`` and the like).
    batch_size : int
    name : str
        How errors name the teacher.
    progress : callable, optional
        Called with (lesions done, lesions) over both sets.
    stop : callable returning bool, optional
        Polled between batches.

    Returns
    -------
    tuple or None
        (PreparedData with the new targets, ``RoundTargets`` of round 0 holding the new and
        the replaced targets), or None when stopped. ``data`` is not changed.

    Raises
    ------
    ValueError
        When the teacher sees lesions otherwise than ``data`` (``check_teacher``).
    """
    for dataset in (data.train_set, data.val_set):
        check_teacher(teacher, dataset, name)
    n_train, total = len(data.train_set), len(data.train_set) + len(data.val_set)
    drawn = []
    for offset, dataset in ((0, data.train_set), (n_train, data.val_set)):
        def step(done, _n, offset=offset):
            if progress is not None:
                progress(offset + done, total)
        masks = refine_targets(teacher, dataset, batch_size=batch_size, progress=step,
                               stop=stop)
        if masks is None:
            return None
        drawn.append(masks)
    before = [np.stack([d.pseudo_mask(i) for i in range(len(d))]) if len(d)
              else np.zeros((0, d.size, d.size), bool) for d in (data.train_set, data.val_set)]
    targets = RoundTargets(0, drawn[0], drawn[1], before[0], before[1])
    taught = replace(data, train_set=data.train_set.with_targets(drawn[0]),
                     val_set=data.val_set.with_targets(drawn[1]))
    return taught, targets



def check_resume_teacher(resume, teacher, option: str = "teacher") -> None:
    """Refuse to continue a run towards other targets than those it started with.

    Parameters
    ----------
    resume : path
        The ``last/`` checkpoint to continue.
    teacher : path or None
        The teacher asked for now.
    option : str
        How the error names the setting.
    """
    from .checkpoints import read_checkpoint_config

    saved = read_checkpoint_config(resume).get("teacher")
    if (saved or None) != (str(teacher) if teacher else None):
        started = f"{option} {saved}" if saved else f"no {option}"
        raise ValueError(f"checkpoint {resume} was trained with {started}: resume with the "
                         f"same targets")
