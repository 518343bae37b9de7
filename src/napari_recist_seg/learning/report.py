"""Benchmark and demo reports: Markdown tables, training curves and overlay figures."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..data._atomic import atomic_write
from .model_kinds import MODEL_REGISTRY, REFERENCE_COLOURS

__all__ = [
    "MODEL_COLOURS",
    "plot_overlays",
    "plot_pseudo_masks_and_groups",
    "plot_training_curves",
    "write_report",
]

#: One fixed colour per method, shared by figures and the napari comparison widget.
MODEL_COLOURS = {**{k.name: k.colour for k in MODEL_REGISTRY.values()}, **REFERENCE_COLOURS}

_TABLE_METRICS = (
    ("dice", "Dice", 4), ("iou", "IoU", 4), ("vs", "VS", 4),
    ("thresholded_jaccard", "thr. Jaccard", 4), ("hausdorff", "Hausdorff px", 2),
    ("hausdorff95", "HD95 px", 2), ("centre_error", "centre err px", 2),
    ("perimeter_error", "perimeter err", 1), ("orientation_error", "orient. err deg", 1),
    ("size_error", "size err", 3), ("shape_error", "shape err", 3),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_write(path, "wb", encoding=None) as fh:
        fig.savefig(fh, format="png", dpi=110)


def plot_training_curves(histories: dict, path) -> Path:
    """Validation loss and Dice per epoch for each model (first seed), saved as PNG.

    ``histories`` maps a model kind to a list (one per seed) of per-epoch records, as stored
    in checkpoints.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for kind, runs in histories.items():
        if not runs or not runs[0]:
            continue
        h = runs[0]
        epochs = [r["epoch"] for r in h]
        colour = MODEL_COLOURS.get(kind)
        train_seg = [r["train"].get("seg", np.nan) for r in h]
        axes[0].plot(epochs, train_seg, "-o", ms=3, color=colour, label=kind)
        axes[1].plot(epochs, [r["val"].get("loss_seg", np.nan) for r in h], "-o", ms=3,
                     color=colour, label=kind)
        axes[2].plot(epochs, [r["val"].get("dice", np.nan) for r in h], "-o", ms=3,
                     color=colour, label=kind)
    titles = ("training segmentation loss", "validation segmentation loss",
              "validation Dice (against pseudo-masks)")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, Path(path))
    plt.close(fig)
    return Path(path)


def plot_overlays(images, truths, predictions: dict, path, title: str = "") -> Path:
    """Contours of each method's prediction and the real mask over a few images."""
    plt = _pyplot()
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.0), squeeze=False)
    for i, ax in enumerate(axes[0]):
        img = np.asarray(images[i])
        ax.imshow(img, cmap=None if img.ndim == 3 else "gray")
        ax.contour(truths[i], levels=[0.5], colors=MODEL_COLOURS["truth"], linewidths=2)
        for name, masks in predictions.items():
            if i < len(masks) and np.any(masks[i]):
                ax.contour(masks[i], levels=[0.5], colors=MODEL_COLOURS.get(name, "white"),
                           linewidths=1.2)
        ax.set_axis_off()
    handles = [plt.Line2D([], [], color=MODEL_COLOURS["truth"], lw=2, label="real mask")]
    handles += [plt.Line2D([], [], color=MODEL_COLOURS.get(k, "white"), lw=1.5, label=k)
                for k in predictions]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95 if title else 1))
    _save(fig, Path(path))
    plt.close(fig)
    return Path(path)


def _fmt(stat: dict, digits: int, seeds: int) -> str:
    if seeds > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def _format_p(p) -> str:
    if p is None:
        return "-"
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def _verdict(c: dict) -> str:
    if c.get("better") in ("a", "b"):
        return f"{c[c['better']]} better (p={_format_p(c['p_value'])})"
    return "no significant difference"


def _seeds_run(results: dict, blocks) -> list[int]:
    """Seeds behind each trained model's scores (the configured count for older results)."""
    counts = [entry["seeds"]["n_seeds"] for block in blocks
              for method, entry in block["methods"].items()
              if method in results["training"] and isinstance(entry.get("seeds"), dict)]
    return counts or [int(results["config"].get("seeds", 1))]


def _comparison_lines(block: dict, seeds_line: list[str]) -> list[str]:
    """The "Paired comparisons" section of one test folder (empty for older results)."""
    comparisons = block.get("comparisons")
    if not comparisons:
        return []
    metric = comparisons[0].get("metric", "dice")
    label = dict((key, name) for key, name, _ in _TABLE_METRICS).get(metric, metric)
    lines = ["", "### Paired comparisons", "", *seeds_line,
             f"Per-image {label} averaged over seeds, paired by image; Wilcoxon signed-rank "
             f"test (two-sided), significant below p = 0.05.", "",
             "| A | B | images | mean A | mean B | A better on | B better on | Wilcoxon p | "
             "verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for c in comparisons:
        def mean(key, c=c):
            return "-" if c.get(key) is None else f"{c[key]:.4f}"

        lines.append(f"| {c['a']} | {c['b']} | {c['n_images']} | {mean('mean_a')} | "
                     f"{mean('mean_b')} | {c['wins_a']} | {c['wins_b']} | "
                     f"{_format_p(c.get('p_value'))} | {_verdict(c)} |")
        if c.get("note"):
            notes.append(f"- {c['a']} vs {c['b']}: {c['note']}.")
    if notes:
        lines += ["", *notes]
    return lines


def _patch_words(side) -> str:
    return "patches twice the lesion's long axis" if side is None else f"{side:g} px patches"


def _patches(results: dict) -> str:
    """The lesion patches of a table benchmark, per model where they differ."""
    sides = {kind: t["crop_px"] for kind, t in results["training"].items() if "crop_px" in t}
    if not sides:
        crop = results["config"].get("crop_px")
        return _patch_words(None if crop == "auto" else crop)
    if len(set(sides.values())) == 1:
        return _patch_words(next(iter(sides.values())))
    return "; ".join(f"{kind} on {_patch_words(side)}" for kind, side in sides.items())


def _crf_words(results: dict) -> str:
    """Which models trained with the edge-aware pairwise loss, and its weight."""
    weights = {kind: t["crf_weight"] for kind, t in results["training"].items()
               if t.get("crf_weight")}
    if not weights:
        return ""
    return " Edge-aware pairwise loss: " + ", ".join(
        f"{kind} weight {w:g}" for kind, w in weights.items()) + "."


def _augment_words(results: dict) -> str:
    """Which models trained on augmented items, and how (each kind's own, under "auto")."""
    augment = results.get("config", {}).get("augment", "none")
    used = {kind: t.get("augment", augment) for kind, t in results["training"].items()}
    used = {kind: a for kind, a in used.items() if a not in ("none", "auto")}
    if not used:
        return ""
    if len(set(used.values())) == 1 and len(used) == len(results["training"]):
        return f"; training augmentation '{next(iter(used.values()))}'"
    return "; training augmentation " + ", ".join(f"'{a}' for {kind}" for kind, a in used.items())


def _prior_words(results: dict) -> str:
    """The prompted models' prior, where it is not the default one."""
    edge = results.get("config", {}).get("prior_edge")
    if "prompted" not in results["training"] or edge in (None, "distance"):
        return ""
    return f" Prompted models' prior edge '{edge}' (`--prior-edge {edge}`)."


def _mean_of(entries, key):
    values = [e[key] for e in entries if e.get(key) is not None]
    return None if not values else float(np.mean(values))


def _dice_change(entries, name: str) -> str:
    """'before → after' of the targets' Dice of one set ("train", "val"), mean of entries."""
    before = _mean_of(entries, f"{name}_previous_dice")
    after = _mean_of(entries, f"{name}_target_dice")
    return "-" if before is None or after is None else f"{before:.4f} → {after:.4f}"


def _self_training_lines(results: dict) -> list[str]:
    """The self-training rounds: how far each refinement moved the targets and, where the
    training data's true masks are known, how good the targets were (mean over seeds)."""
    runs = results.get("self_training") or {}
    if not runs:
        return []
    lines = ["", "### Self-training rounds", "",
             f"{results['config'].get('self_training_rounds')} round(s) after the first: each "
             "trains a fresh network towards the previous network's masks, kept within each "
             "RECIST's trimap. Target Dice is against the training data's own true masks, "
             "which nothing trains on (- where they are unknown).", "",
             "| model | round | targets changed (% of pixels) | training targets Dice "
             "(before → after) | validation targets Dice (before → after) |",
             "|---|---|---|---|---|"]

    for kind, seeds in runs.items():
        by_round: dict[int, list[dict]] = {}
        for seed in seeds:
            for entry in seed["rounds"]:
                by_round.setdefault(entry["round"], []).append(entry)
        for r, entries in sorted(by_round.items()):
            lines.append(f"| {kind} | {r} | {100 * _mean_of(entries, 'changed_pixels'):.2f} | "
                         f"{_dice_change(entries, 'train')} | {_dice_change(entries, 'val')} |")
    return lines


def _teacher_lines(results: dict) -> list[str]:
    """The teacher's targets and how good they were against the training data's true masks
    (mean over seeds), beside the drawn targets they replaced."""
    teacher = results.get("teacher") or {}
    if not teacher.get("targets"):
        return []
    lines = ["", "### Targets drawn by a teacher", "",
             f"Each model trained towards the masks that the model in `{teacher['path']}` drew "
             f"from each training lesion's RECIST (flip-averaged, kept within the RECIST's "
             f"trimap), in place of the `{results['config'].get('pseudo_mask')}` drawing. "
             "Dice is against the training data's own true masks, which nothing trains on "
             "(- where they are unknown).", "",
             "| model | targets changed (% of pixels) | training targets Dice (drawing → "
             "teacher) | validation targets Dice (drawing → teacher) |",
             "|---|---|---|---|"]

    for kind, entries in teacher["targets"].items():
        lines.append(f"| {kind} | {100 * _mean_of(entries, 'changed_pixels'):.2f} | "
                     f"{_dice_change(entries, 'train')} | {_dice_change(entries, 'val')} |")
    return lines


def _empty_mask_lines(block: dict) -> list[str]:
    """A note under a metric table naming the methods that found no lesion in some images,
    whose distances are then worst-case stand-ins rather than measured."""
    counts = [(method, entry.get("empty_masks") or 0)
              for method, entry in block["methods"].items()]
    counts = [(method, n) for method, n in counts if n > 0]
    if not counts:
        return []
    words = ", ".join(f"{method} {n:g}" for method, n in counts)
    return ["", f"Empty masks, where the truth is not (mean over seeds): {words} of "
                f"{block['n_test']}. Each scores Dice 0, its centre error and Hausdorff "
                f"distances the diagonal of the image or patch scored, and its orientation "
                f"error 90°: worst-case values, so that the means stay defined."]


def write_report(out_dir, results: dict, tests, examples: dict) -> Path:
    """Write ``report.md`` with metric tables, training figures and overlays."""
    out = Path(out_dir)
    seeds = int(results["config"].get("seeds", 1))
    lines = ["# RECIST weak supervision: benchmark report", ""]
    cfg = results["config"]
    if cfg.get("source") == "table":
        n_val = results.get("n_val")
        lesions = (f"{results['n_train']} training lesions (Train_Val_Test 1) and {n_val} "
                   f"validation lesions (2)" if n_val is not None else
                   f"{results['n_train']} training lesions (Train_Val_Test 1 and 2)")
        scored = ("scored on split 3 against its true masks" if results.get("scored", True)
                  else "not scored: no true masks were found for split 3")
        source = (
            f"RECIST table `{cfg.get('train_dir')}`: {lesions}, {scored}; "
            f"{_patches(results)}, "
            f"window {cfg.get('window') or 'from each row'}; models trained on "
            f"`{cfg.get('pseudo_mask')}` pseudo-masks only, no mask read."
        )
    else:
        source = (
            f"Training folder `{cfg.get('train_dir')}`: {results['n_train']} images, RECIST "
            f"simulated from their masks; models trained on `{cfg.get('pseudo_mask')}` "
            f"pseudo-masks only, "
            + ("on whole images." if cfg.get("lesion_margin") is None else
               f"on crops around each lesion's RECIST (margin {cfg['lesion_margin']:g}).")
        )
    if cfg.get("teacher"):
        source += (f" In their place, the masks the model `{cfg['teacher']}` drew from the same "
                   f"RECIST (below).")
    weights = f" with weights {cfg['encoder_weights']!r}" if cfg.get("encoder_weights") else ""
    flips = "; predictions averaged with their flips" if cfg.get("tta") else ""
    flips = _augment_words(results) + flips
    over_seeds = " (mean ± std over seeds)" if seeds > 1 else ""
    lines += [
        f"{source} Encoder {cfg.get('encoder')}{weights}, input {cfg.get('size')} px, "
        f"learning rate {cfg.get('lr')}, at most {cfg.get('epochs')} epochs, {seeds} seed(s)"
        f"{over_seeds}; the checkpoint of the best validation {cfg.get('select', 'loss')}"
        f"{flips}.{_crf_words(results)}{_prior_words(results)}",
        "",
        "## Training",
        "",
        "| model | epochs run | best epoch | seconds to best | train seconds | images/s |",
        "|---|---|---|---|---|---|",
    ]
    for kind, t in results["training"].items():
        def f(key, digits=1, t=t):
            v = t.get(key)
            return "-" if v is None else f"{v:.{digits}f}"

        # Epochs are whole numbers for one seed, means over several.
        e = 0 if seeds == 1 else 1
        lines.append(f"| {kind} | {f('epochs_run', e)} | {f('best_epoch', e)} | "
                     f"{f('seconds_to_best', 0)} | {f('train_seconds', 0)} | "
                     f"{f('images_per_second', 2)} |")
    lines += _self_training_lines(results)
    lines += _teacher_lines(results)
    if results.get("histories"):
        plot_training_curves(results["histories"], out / "training_curves.png")
        lines += ["", "![training curves](training_curves.png)", ""]
    run = _seeds_run(results, [results["tests"][test.name] for test in tests])
    n_seeds = str(min(run)) if min(run) == max(run) else f"{min(run)} to {max(run)}"
    seeds_line = [f"Seeds: {n_seeds}; mean ± std over seeds.", ""]
    if min(run) < 3:
        seeds_line += ["**These claims are indicative only (fewer than 3 seeds).**", ""]
    for test in tests:
        block = results["tests"][test.name]
        if (results.get("config") or {}).get("source") == "table":
            title = f"Test split ({block['n_test']} lesions, real masks)"
        else:
            title = f"Test folder `{test.name}` ({block['n_test']} images, real masks)"
        lines += ["", f"## {title}", ""]
        header = "| method | " + " | ".join(label for _, label, _ in _TABLE_METRICS) + " |"
        lines += [header, "|---" * (len(_TABLE_METRICS) + 1) + "|"]
        for method, entry in block["methods"].items():
            m = entry["metrics"]
            cells = [_fmt(m[key], d, seeds if method not in ("ellipse", "quarter_ellipse")
                          else 1) for key, _, d in _TABLE_METRICS]
            label = method if method in results["training"] else f"{method} (pseudo-mask)"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += _empty_mask_lines(block)
        section = _comparison_lines(block, seeds_line)
        if section:
            seeds_line = []  # stated once, in the first section
        lines += section
        ex = examples.get(test.name, {})
        if ex:
            n = min(len(v) for v in ex.values())
            if n:
                # A plain file name: Markdown image links stop at a space.
                fig_name = "overlays_" + re.sub(r"[^A-Za-z0-9._-]+", "_", test.name) + ".png"
                plot_overlays(test.images[:n], test.masks[:n], {k: v[:n] for k, v in ex.items()},
                              out / fig_name, title=f"{test.name}: real mask and predictions")
                lines += ["", f"![overlays]({fig_name})"]
    lines += ["", f"Total time: {results.get('total_seconds', 0):.0f} s.", ""]
    path = out / "report.md"
    with atomic_write(path) as fh:
        fh.write("\n".join(lines))
    return path


def plot_pseudo_masks_and_groups(images, recists, groups, path, truths=None,
                                 methods=("ellipse", "quarter_ellipse"), max_images=12) -> Path:
    """RECIST lines coloured by group, with their pseudo-masks, over a few images."""
    from ..core.pseudo_masks import pseudo_mask

    plt = _pyplot()
    n = min(max_images, len(images))
    cols = min(6, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.5 * rows), squeeze=False)
    palette = plt.cm.tab10.colors
    for ax in axes.flat:
        ax.set_axis_off()
    for i, ax in enumerate(axes.flat[:n]):
        img = np.asarray(images[i])
        r = recists[i]
        ax.imshow(img, cmap=None if img.ndim == 3 else "gray")
        if truths is not None:
            ax.contour(truths[i], levels=[0.5], colors=MODEL_COLOURS["truth"], linewidths=1)
        for method in methods:
            ax.contour(pseudo_mask(r, img.shape[:2], method), levels=[0.5],
                       colors=MODEL_COLOURS.get(method, "white"), linewidths=1)
        colour = palette[int(groups[i]) % 10]
        for axis, style in ((r.long_axis, "-"), (r.short_axis, "--")):
            ax.plot(axis[:, 1], axis[:, 0], style, color=colour, lw=2)
        ax.set_title(f"group {int(groups[i])}: {r.long_mm:.0f} x {r.short_mm:.0f}", fontsize=8)
    handles = [plt.Line2D([], [], color=MODEL_COLOURS.get(m, "white"), label=m) for m in methods]
    if truths is not None:
        handles.insert(0, plt.Line2D([], [], color=MODEL_COLOURS["truth"], label="true mask"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    fig.suptitle("RECIST lines (colour = K-means group) and pseudo-masks", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    _save(fig, Path(path))
    plt.close(fig)
    return Path(path)
