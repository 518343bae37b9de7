"""Self-training rounds: a trained network's own masks, kept within what each RECIST allows,
become the targets of the next network.

Round 0 trains on the drawn targets (``--pseudo-mask``). After each round the network predicts
every training and validation lesion (with flip test-time augmentation), and
``core.training_targets.self_training_target`` keeps its mask within the lesion's trimap:
pieces no axis crosses are dropped, certain lesion is added and certain background removed.
The next round trains a fresh network (same seed and settings) towards those targets; its
checkpoint is chosen against the refined validation targets, so that early stopping does not
pull it back towards the drawing. The last round's network is the result.

Folders: round ``r`` of ``R`` extra rounds trains into ``OUT/round-r`` for ``r < R`` and the
last into ``OUT`` itself, so ``OUT`` is used like any run folder.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from ..core.training_targets import self_training_target
from .inference import batch_probabilities, load_model
from .model_kinds import MODEL_REGISTRY
from .run_folders import RunFolderOccupied, find_run, round_folders, round_name
from .train_config import MAX_ROUNDS, TrainConfig, check_rounds
from .trainer import TrainEvent, train

__all__ = ["MAX_ROUNDS", "RoundTargets", "check_rounds", "refine_targets", "round_folders",
           "round_name", "self_train"]


@dataclass
class RoundTargets:
    """One refinement: the targets round ``round`` trains on and those they replace.

    Arrays are bool (n, size, size) in item coordinates, in the order of the training and
    validation sets; ``changed`` is the share of their pixels whose target changed.
    """

    round: int
    train_masks: np.ndarray
    val_masks: np.ndarray
    previous_train_masks: np.ndarray
    previous_val_masks: np.ndarray

    @property
    def changed(self) -> float:
        flips = int((self.train_masks != self.previous_train_masks).sum()
                    + (self.val_masks != self.previous_val_masks).sum())
        return flips / max(1, self.train_masks.size + self.val_masks.size)


def _plain(dataset):
    # Targets are made in item coordinates, unaugmented; the prompt comes from prompt_of.
    view = copy.copy(dataset)
    view.augment = False
    view.prompt = False
    return view


def _targets_of(dataset) -> np.ndarray:
    return np.stack([dataset.pseudo_mask(i) for i in range(len(dataset))])


def refine_targets(model, dataset, *, batch_size: int = 16, threshold: float = 0.5,
                   progress: Callable[[int, int], None] | None = None,
                   stop: Callable[[], bool] | None = None) -> np.ndarray | None:
    """Each lesion's next-round target from ``model``'s prediction on ``dataset``.

    Parameters
    ----------
    model : torch.nn.Module
        A trained network as ``load_model`` returns it (any model kind; prompted models are
        given each lesion's plain RECIST prompt).
    dataset : LesionDataset
        The lesions, read without augmentation.
    batch_size : int
    threshold : float
        Probability at which a pixel is lesion.
    progress : callable, optional
        Called with (lesions done, lesions) after each batch.
    stop : callable returning bool, optional
        Polled between batches; when it returns True nothing more is predicted.

    Returns
    -------
    numpy.ndarray of bool, (n, size, size), or None when stopped
        See ``core.training_targets.self_training_target``.
    """
    plain = _plain(dataset)
    prompted = MODEL_REGISTRY[model.kind].prompted
    n = len(plain)
    out = np.zeros((n, plain.size, plain.size), dtype=bool)
    for start in range(0, n, int(batch_size)):
        if stop is not None and stop():
            return None
        idx = range(start, min(n, start + int(batch_size)))
        images = np.stack([plain[i]["image"].numpy() for i in idx])
        prompts = np.stack([plain.prompt_of(i) for i in idx]) if prompted else None
        prob, _ = batch_probabilities(model, images, True, prompts)
        for j, i in enumerate(idx):
            out[i] = self_training_target(prob[j], plain.recists[i], threshold=threshold)
        if progress is not None:
            progress(idx[-1] + 1, n)
    return out


def self_train(
    train_set,
    val_set,
    config: TrainConfig,
    out_dir,
    *,
    rounds: int,
    grouping=None,
    extra_config: dict | None = None,
    stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
    on_targets: Callable[[RoundTargets], None] | None = None,
) -> Iterator[TrainEvent]:
    """Train ``rounds + 1`` networks, each on targets refined by the one before.

    Parameters
    ----------
    train_set, val_set, config, grouping, extra_config, stop, overwrite
        As for ``trainer.train``; each round gets them (``overwrite`` replaces every round's
        folder).
    out_dir : path
        The result's run folder (see ``round_folders``).
    rounds : int
        Extra rounds after the first network (0: plain training).
    on_targets : callable, optional
        Given a ``RoundTargets`` after each refinement.

    Yields
    ------
    TrainEvent
        Every round's events; ``stage`` is the round's ``round_name``, which also starts
        ``message``.

    Raises
    ------
    RunFolderOccupied
        Before anything trains, when a round's folder holds a run and ``overwrite`` is off.
    ValueError
        For a bad ``rounds``, or rounds asked of a ``torchrun`` start.
    """
    rounds = check_rounds(rounds)
    folders = round_folders(out_dir, rounds)
    if rounds and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("self-training rounds run in one process; start them without torchrun")
    if not overwrite:
        for folder in folders:
            info = find_run(folder)
            if info is not None:
                raise RunFolderOccupied(folder, info)
    stop = stop or (lambda: False)
    for r, folder in enumerate(folders):
        facts = dict(extra_config or {})
        if rounds:
            facts["self_training"] = {"round": r, "rounds": rounds,
                                      "first_target": train_set.pseudo_mask_method}
        last = None
        for event in train(train_set, val_set, config, folder, grouping=grouping,
                           extra_config=facts, stop=stop, overwrite=overwrite):
            if rounds:
                event.stage = round_name(r, rounds)
                event.message = " ".join(filter(None, (event.stage, event.message)))
            last = event
            yield event
        if last is None or last.kind == "stopped" or r == rounds:
            return
        model = load_model(folder, config.device)
        previous = (_targets_of(train_set), _targets_of(val_set))
        masks = [None, None]
        for k, dataset in enumerate((train_set, val_set)):
            if not stop():
                masks[k] = refine_targets(model, dataset, batch_size=config.batch_size,
                                          stop=stop)
        del model
        train_masks, val_masks = masks
        if train_masks is None or val_masks is None:
            # Stopped between rounds: the round that finished is the result.
            yield replace(last, kind="stopped", message=f"stopped after the "
                          f"{round_name(r, rounds)}; its network is in {folder}")
            return
        if on_targets is not None:
            on_targets(RoundTargets(r + 1, train_masks, val_masks, *previous))
        train_set = train_set.with_targets(train_masks)
        val_set = val_set.with_targets(val_masks)
