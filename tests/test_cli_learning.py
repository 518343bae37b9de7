"""recist-seg train / predict / evaluate / benchmark / demo, end to end on tiny data."""

import csv
import json

import numpy as np
import pytest
import torch

from napari_recist_seg.cli import main
from napari_recist_seg.core.metrics import METRIC_NAMES

from ._folders import make_isic_folder


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_train_predict_evaluate(tmp_path, capsys):
    data = make_isic_folder(tmp_path / "data", n=10, size=48)
    out = tmp_path / "runs"
    code = main(["train", str(data), "--out", str(out), "--models", "multitask", "--size", "32",
                 "--epochs", "1", "--batch", "4", "--k", "2", "--select", "dice"])
    assert code == 0
    assert (out / "multitask" / "best" / "model.safetensors").is_file()
    saved = json.loads((out / "multitask" / "best" / "config.json").read_text())
    assert saved["train_config"]["select"] == "dice"
    preds = tmp_path / "preds"
    assert main(["predict", str(data / "images"), "--model", str(out / "multitask"),
                 "--out", str(preds)]) == 0
    assert len(list(preds.glob("*_mask.png"))) == 10
    with open(preds / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10 and all(r["predicted_groups"] in ("0", "1") for r in rows)
    metrics_csv = tmp_path / "metrics.csv"
    assert main(["evaluate", "--pred", str(preds), "--truth", str(data),
                 "--out", str(metrics_csv)]) == 0
    text = capsys.readouterr().out
    assert "10 images" in text and "dice" in text
    with open(metrics_csv) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10 and set(METRIC_NAMES) <= set(rows[0])
    # Training into the finished run again is refused with the ways on: another folder,
    # --overwrite, or --resume with more epochs, which trains one more epoch.
    capsys.readouterr()
    again = ["train", str(data), "--out", str(out), "--models", "multitask", "--size", "32",
             "--batch", "4", "--k", "2", "--select", "dice"]
    assert main([*again, "--epochs", "1"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "multitask run finished at epoch 1" in err and "more --epochs than 1" in err
    assert main([*again, "--epochs", "2", "--resume", str(out / "multitask")]) == 0
    saved = json.loads((out / "multitask" / "last" / "config.json").read_text())
    assert len(saved["history"]) == 2
    capsys.readouterr()

    # A run still going (its lock names a live process on this machine) is neither
    # resumed nor replaced, whatever is asked.
    import os
    import shutil
    import socket

    lock = out / "multitask" / ".lock"
    lock.write_text(f"pid={os.getpid()}\nhost={socket.gethostname()}\n")
    for extra in ([], ["--overwrite"]):
        assert main([*again, "--epochs", "3", *extra]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "is in use by another training run" in err and "--resume" not in err
    lock.unlink()
    # A run with its best checkpoint only cannot be resumed: not suggested.
    shutil.rmtree(out / "multitask" / "last")
    assert main([*again, "--epochs", "3"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "best checkpoint only" in err and "--resume" not in err and "--overwrite" in err


@pytest.mark.parametrize("target", ["quarter_ellipse", "trimap_random_walker"])
def test_train_on_images_wider_than_tall(tmp_path, capsys, target):
    # Published dermoscopy sets (PH2, ISIC 2018, HAM10000) are 4:3, not square.
    data = make_isic_folder(tmp_path / "data", n=6, size=48, width=64)
    out = tmp_path / "runs"
    assert main(["train", str(data), "--out", str(out), "--models", "multitask", "--size", "32",
                 "--epochs", "1", "--batch", "3", "--k", "2", "--pseudo-mask", target]) == 0
    assert (out / "multitask" / "best" / "model.safetensors").is_file()
    preds = tmp_path / "preds"
    assert main(["predict", str(data / "images"), "--model", str(out / "multitask"),
                 "--out", str(preds)]) == 0
    import imageio.v3 as iio

    assert {iio.imread(p).shape for p in preds.glob("*_mask.png")} == {(48, 64)}


def test_train_rejects_unknown_model(tmp_path, capsys):
    data = make_isic_folder(tmp_path / "data", n=4, size=32)
    assert main(["train", str(data), "--out", str(tmp_path / "o"), "--models", "unet"]) == 2
    assert "unknown model kind" in capsys.readouterr().err


def test_benchmark_writes_results_in_the_documented_shape(tmp_path):
    train_dir = make_isic_folder(tmp_path / "train", n=10, size=48, seed=1)
    test_dir = make_isic_folder(tmp_path / "test", n=4, size=48, seed=2)
    out = tmp_path / "bench"
    code = main(["benchmark", "--train", str(train_dir), "--test", str(test_dir), "--out",
                 str(out), "--models", "a1,coseg", "--epochs", "1", "--size", "32",
                 "--batch", "4", "--n-train", "8", "--k", "2", "--select", "dice"])
    assert code == 0
    saved = json.loads((out / "runs" / "coseg-seed0" / "best" / "config.json").read_text())
    assert saved["train_config"]["select"] == "dice"
    results = json.loads((out / "results.json").read_text())
    assert results["n_train"] == 8
    for kind in ("a1", "coseg"):
        t = results["training"][kind]
        assert t["epochs_run"] == 1 and t["best_epoch"] == 1 and t["images_per_second"] > 0
    block = results["tests"]["test"]
    assert block["n_test"] == 4
    assert set(block["methods"]) == {"a1", "coseg", "ellipse", "quarter_ellipse"}
    for entry in block["methods"].values():
        assert set(entry["metrics"]) == set(METRIC_NAMES)
        assert 0 <= entry["metrics"]["dice"]["mean"] <= 1
    # Pseudo-masks of the simulated RECIST of elliptic lesions are near perfect.
    assert block["methods"]["ellipse"]["metrics"]["dice"]["mean"] > 0.85
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "on whole images." in report
    assert "learning rate 0.001" in report
    assert "the checkpoint of the best validation dice" in report
    assert "training_curves.png" in report and (out / "training_curves.png").is_file()
    assert (out / "overlays_test.png").is_file()


def test_benchmark_on_lesion_crops_trains_and_scores_crop_models(tmp_path):
    from napari_recist_seg.data.crops import crop_transform_for
    from napari_recist_seg.learning.benchmark import load_folder
    from napari_recist_seg.learning.inference import load_model, predict

    train_dir = make_isic_folder(tmp_path / "train", n=10, size=48, seed=1)
    test_dir = make_isic_folder(tmp_path / "test", n=3, size=48, seed=2)
    out = tmp_path / "bench"
    code = main(["benchmark", "--train", str(train_dir), "--test", str(test_dir), "--out",
                 str(out), "--models", "a1,prompted", "--epochs", "1", "--size", "32",
                 "--batch", "4", "--k", "2", "--lesion-crops", "0.25"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["lesion_margin"] == 0.25
    assert set(results["tests"]["test"]["methods"]) >= {"a1", "prompted"}
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "crops around each lesion's RECIST (margin 0.25)" in report
    test = load_folder(test_dir)
    for kind in ("a1", "prompted"):
        model = load_model(out / "runs" / f"{kind}-seed0")
        assert model.preprocessing["mode"] == "crops"
        assert model.preprocessing["margin"] == 0.25
        # Scored on the whole image: the crop's mask is pasted back where the lesion lies.
        image, recist = test.images[0], test.recists[0]
        mask = predict(model, image, [recist], threshold=0.01)
        assert mask.shape == image.shape[:2]
        t = crop_transform_for(recist, 32, 0.25)
        corners = t.to_source(np.array([[0.0, 0.0], [32.0, 32.0]]))
        (r0, c0), (r1, c1) = np.floor(corners.min(0)) - 1, np.ceil(corners.max(0)) + 1
        outside = np.ones(mask.shape, bool)
        outside[max(0, int(r0)):int(r1) + 1, max(0, int(c0)):int(c1) + 1] = False
        assert outside.any() and not mask[outside].any()


def test_lesion_crops_are_refused_for_a_lesion_table(tmp_path, deeplesion_folder, capsys):
    code = main(["benchmark", "--train", str(deeplesion_folder / "DL_info.csv"), "--out",
                 str(tmp_path / "bench"), "--lesion-crops"])
    assert code != 0
    assert "--lesion-crops" in capsys.readouterr().err
    assert not (tmp_path / "bench").exists()


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-train", "12", "--n-test", "4",
                 "--epochs", "1", "--size", "32"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["training"]) == {"multitask", "a1", "coseg"}
    assert (out / "pseudo_masks_and_groups.png").stat().st_size > 10_000


def _mask_folders(tmp_path, truths: dict, preds: dict):
    """``pred/`` and ``truth/`` folders of the given 0/255 masks, by file name."""
    import imageio.v3 as iio

    pred, truth = tmp_path / "pred", tmp_path / "truth"
    for folder, masks in ((truth, truths), (pred, preds)):
        folder.mkdir()
        for name, mask in masks.items():
            iio.imwrite(folder / name, mask)
    return pred, truth


def _square(side, lo, hi):
    square = np.zeros((side, side), np.uint8)
    square[lo:hi, lo:hi] = 255
    return square


def test_evaluate_leaves_distances_of_empty_predictions_out(tmp_path, capsys):
    square = _square(40, 10, 20)
    pred, truth = _mask_folders(
        tmp_path, {"a.png": square, "b.png": square},
        {"a.png": np.roll(square, 4, axis=1),  # found, 4 px off
         "b.png": np.zeros_like(square)})  # nothing found
    out = tmp_path / "metrics.csv"
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1 empty predictions" in text
    means = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
             if line.startswith("  ")}
    assert means["centre_error"] == pytest.approx(4.0)  # from image a alone
    assert means["dice"] == pytest.approx((0.6 + 0.0) / 2)
    rows = {r["image"]: r for r in csv.DictReader(out.open())}
    assert rows["b"]["hausdorff"] in ("nan", "") and float(rows["a"]["hausdorff"]) == 4.0
    # Mask pictures have no pixel size: the distances say they are in px.
    assert "  centre_error         4.0000 px" in text and "  dice                 0.3000\n" in text
    assert {r["distance_unit"] for r in rows.values()} == {"px"}


def test_evaluate_refuses_to_replace_a_file_and_names_a_missing_folder(tmp_path, capsys):
    square = _square(20, 5, 10)
    pred, truth = _mask_folders(tmp_path, {"a.png": square}, {"a.png": square})
    out = tmp_path / "lesions.csv"
    out.write_text("measurements of another command\n")
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth),
                 "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "measurements of another command\n"
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--out", str(out),
                 "--overwrite"]) == 0
    assert next(csv.DictReader(out.open()))["dice"] == "1.0"
    assert main(["evaluate", "--pred", str(tmp_path / "nothere"), "--truth", str(truth)]) == 2
    assert "--pred " in (err := capsys.readouterr().err) and "no such folder" in err


def test_evaluate_of_nifti_volumes_says_it_reads_mask_pictures(tmp_path, capsys):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir(), truth.mkdir()
    (pred / "case_labels.nii.gz").write_bytes(b"")
    (truth / "case_mask.nii.gz").write_bytes(b"")
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth)]) == 2
    err = capsys.readouterr().err
    assert "does not read NIfTI volumes such as case_labels.nii.gz" in err
    assert "<stem>_slice<z>_mask.png" in err


@pytest.mark.parametrize("name", ["report.md", "results.json"])
def test_benchmark_and_demo_leave_an_earlier_report_alone(tmp_path, capsys, name):
    train_dir = make_isic_folder(tmp_path / "train", n=6, size=32, seed=1)
    test_dir = make_isic_folder(tmp_path / "test", n=2, size=32, seed=2)
    for command in (["benchmark", "--train", str(train_dir), "--test", str(test_dir),
                     "--models", "a1"], ["demo", "--n-train", "6", "--n-test", "2"]):
        out = tmp_path / command[0]
        out.mkdir()
        (out / name).write_text("mine")
        assert main([*command, "--out", str(out), "--epochs", "1", "--size", "32"]) == 2
        assert "pass --overwrite" in capsys.readouterr().err
        assert (out / name).read_text() == "mine"
        assert sorted(p.name for p in out.iterdir()) == [name]


def test_predict_without_recists_refuses_a_crops_model_before_writing(tmp_path, capsys):
    from ._learning_data import crop_preprocessing, saved_model

    model = saved_model(tmp_path / "crops", "a1", in_channels=1,
                        preprocessing=crop_preprocessing())
    data = make_isic_folder(tmp_path / "data", n=2, size=32)
    out = tmp_path / "pred"
    assert main(["predict", str(data / "images"), "--model", str(model), "--out",
                 str(out)]) == 2
    assert "trained on lesion crops: give each lesion's RECIST with --recists" in (
        capsys.readouterr().err)
    assert not out.exists()
    # A model path that does not exist names the option it was given to.
    assert main(["predict", str(data / "images"), "--model", str(tmp_path / "nowhere"),
                 "--out", str(out)]) == 2
    assert f"--model {tmp_path / 'nowhere'}: no such" in capsys.readouterr().err


def test_evaluate_never_scores_predictions_against_predictions(tmp_path, capsys):
    # An ISIC-like folder (images/, masks/NAME_segmentation.png) with the predictions written
    # into it, as `predict FOLDER --out FOLDER/pred` does, and an earlier run's beside them.
    import imageio.v3 as iio

    data = tmp_path / "data"
    for sub in ("images", "masks", "pred", "pred-old"):
        (data / sub).mkdir(parents=True)
    truth = _square(40, 10, 20)
    iio.imwrite(data / "images" / "a.png", np.zeros((40, 40), np.uint8))
    iio.imwrite(data / "masks" / "a_segmentation.png", truth)
    iio.imwrite(data / "pred" / "a_mask.png", np.roll(truth, 5, axis=1))

    # The predictions inside --truth are not their own truth.
    assert main(["evaluate", "--pred", str(data / "pred"), "--truth", str(data)]) == 0
    means = {line.split()[0]: float(line.split()[1])
             for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert means["dice"] == pytest.approx(0.5)

    # Another prediction of the same image under --truth: which is the truth is not guessed.
    iio.imwrite(data / "pred-old" / "a_mask.png", np.roll(truth, 5, axis=1))
    assert main(["evaluate", "--pred", str(data / "pred"), "--truth", str(data)]) == 2
    err = capsys.readouterr().err
    assert "2 masks under" in err and "pred-old" in err and "a_segmentation.png" in err


def test_benchmark_summary_gives_a_spread_only_over_several_seeds(capsys):
    from napari_recist_seg.commands.learning import _print_summary

    def entry(n_seeds, mean, std):
        stat = {"mean": mean, "std": std}
        return {"metrics": {"dice": stat, "iou": stat, "hausdorff95": stat},
                "seeds": {"mean": mean, "std": std, "n_seeds": n_seeds}}

    _print_summary({"tests": {"test": {"n_test": 3, "methods": {
        "prompted": entry(3, 0.9, 0.0123), "quarter_ellipse": entry(1, 0.8, 0.0)}}},
        "training": {}})
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
             if line.startswith("  ")}
    assert "0.9000 ± 0.0123" in lines["prompted"]
    assert "±" not in lines["quarter_ellipse"] and "0.8000" in lines["quarter_ellipse"]
