import json

import numpy as np
import pytest

from napari_recist_seg import __version__
from napari_recist_seg.cli import main
from napari_recist_seg.data.recist_files import read_recists, write_recists

from ._folders import make_isic_folder


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("pseudo-masks", "groups"):
        assert name in out


@pytest.mark.parametrize("module", ["napari_recist_seg", "napari_recist_seg.cli"])
def test_python_dash_m_runs_the_commands(module):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("pseudo-masks", "train", "predict", "benchmark", "demo"):
        assert name in done.stdout


def test_pseudo_masks_from_folder(tmp_path, capsys):
    import imageio.v3 as iio

    data = make_isic_folder(tmp_path / "data", n=4)
    out = tmp_path / "out"
    assert main(["pseudo-masks", str(data), "--out", str(out), "--method", "all"]) == 0
    text = capsys.readouterr().out
    assert "quarter_ellipse" in text and "mean Dice" in text
    labels = iio.imread(out / "ISIC_0000000_ellipse.png")
    mask = iio.imread(data / "masks" / "ISIC_0000000_segmentation.png") > 0
    assert labels.shape == mask.shape
    overlap = 2 * np.sum((labels > 0) & mask) / (np.sum(labels > 0) + mask.sum())
    assert overlap > 0.85  # ellipse masks are measured and redrawn almost exactly
    table = read_recists(out / "recists.csv")
    assert len(table) == 4
    # Its image names are the folder's: the command says how to train from it, and that
    # works as said.
    assert f"names its images relative to {data}: give --images {data} to train" in text
    from napari_recist_seg.data.recist_sources import read_lesion_table

    assert len(read_lesion_table(out / "recists.csv", data).rows) == 4
    # A mask of another size than its image is refused (by groups too), naming both.
    small = data / "masks" / "ISIC_0000002_segmentation.png"
    iio.imwrite(small, iio.imread(small)[::2, ::2])
    capsys.readouterr()
    assert main(["pseudo-masks", str(data), "--out", str(tmp_path / "o2")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "ISIC_0000002_segmentation.png is 32x32 but image" in err and "64x64" in err
    assert not (tmp_path / "o2").exists()
    assert main(["groups", str(data), "--k", "2", "--out", str(tmp_path / "g.csv")]) == 2
    assert "is 32x32 but image" in " ".join(capsys.readouterr().err.split())


def test_pseudo_masks_from_recist_file_needs_shape(tmp_path, capsys):
    data = make_isic_folder(tmp_path / "data", n=2)
    out = tmp_path / "out"
    main(["pseudo-masks", str(data), "--out", str(out)])
    # The CSV names images that do not exist next to it: the size must be given.
    assert main(["pseudo-masks", str(out / "recists.csv"), "--out", str(tmp_path / "o2")]) == 2
    assert "--shape" in capsys.readouterr().err
    code = main(["pseudo-masks", str(out / "recists.csv"), "--out", str(tmp_path / "o2"),
                 "--shape", "64", "64"])
    assert code == 0
    assert (tmp_path / "o2" / "ISIC_0000001_ellipse.png").exists()
    # Lesions on slices of a scan the file does not name are refused, not piled into one
    # picture.
    from napari_recist_seg.core.recist import Recist

    on_slices = tmp_path / "slices.csv"
    axes = ([[20, 10], [20, 40]], [[10, 25], [30, 25]])
    write_recists(on_slices, [Recist(*axes), Recist(*axes)], slices=[3, 7])
    capsys.readouterr()
    assert main(["pseudo-masks", str(on_slices), "--out", str(tmp_path / "o3"),
                 "--shape", "64", "64"]) == 2
    assert "name no scan (column image)" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "o3").exists()


def test_groups_writes_column_and_model(tmp_path, capsys):
    data = make_isic_folder(tmp_path / "data", n=8)
    out = tmp_path / "groups.csv"
    assert main(["groups", str(data), "--suggest-k", "2:4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "silhouette" in text
    table = read_recists(out)
    groups = table.features["group"]
    assert len(groups) == 8 and min(groups) >= 0
    saved = json.loads(out.with_suffix(".grouping.json").read_text())
    assert saved["k"] == len(saved["centres"]) == max(groups) + 1


def test_groups_errors_are_clear(tmp_path, capsys):
    data = make_isic_folder(tmp_path / "data", n=3)
    assert main(["groups", str(data), "--k", "5", "--out", str(tmp_path / "g.csv")]) == 2
    assert "more than the 3 lesions" in capsys.readouterr().err
    assert main(["groups", str(tmp_path / "missing"), "--k", "2", "--out", "x.csv"]) == 2
    assert not (tmp_path / "g.csv").exists()


def test_file_system_errors_are_one_line_naming_the_path(tmp_path, capsys):
    data = make_isic_folder(tmp_path / "data", n=3)
    # The output is a folder, not a file; then a path under a regular file.
    taken = tmp_path / "taken.csv"
    taken.mkdir()
    blocker = tmp_path / "a file"
    blocker.write_text("keep me")
    for out in (taken, blocker / "groups.csv"):
        assert main(["groups", str(data), "--k", "2", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]  # after the progress bar's line
        assert last.startswith("recist-seg groups: error: ") and str(out) in last, err
    assert blocker.read_text() == "keep me" and not any(taken.iterdir())


def test_groups_read_a_deeplesion_table_without_its_images(deeplesion_folder, tmp_path, capsys):
    import shutil

    # DL_info.csv under another name, with no image anywhere: K-means needs the RECIST only.
    table_path = tmp_path / "exported_rows.csv"
    shutil.copy(deeplesion_folder / "DL_info.csv", table_path)
    out = tmp_path / "groups.csv"
    assert main(["groups", str(table_path), "--k", "2", "--out", str(out)]) == 0
    table = read_recists(out)
    assert table.images == ["000001_01_01_109.png", "000001_01_01_109.png",
                            "000002_01_01_020.png"]
    assert sorted(set(table.features["group"])) == [0, 1]
    assert table.features["split"] == ["train", "val", "test"]
    first = table.recists[0]
    # 1-based x, y (11, 21)-(41, 21): 0-based rows 20, columns 10 to 40, 0.7 mm pixels.
    np.testing.assert_allclose(first.long_axis, [[20, 10], [20, 40]])
    assert first.long_mm == pytest.approx(30 * 0.7)


def test_pseudo_masks_take_the_image_size_from_a_deeplesion_table(deeplesion_folder, tmp_path,
                                                                  capsys):
    import imageio.v3 as iio

    out = tmp_path / "out"
    # The folder holding DL_info.csv; Image_size "64, 48" is x, y: 48 rows, 64 columns.
    assert main(["pseudo-masks", str(deeplesion_folder), "--out", str(out)]) == 0
    assert "3 lesions on 2 images" in capsys.readouterr().out
    labels = iio.imread(out / "000001_01_01_109_ellipse.png")
    assert labels.shape == (48, 64)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    # The first lesion's ellipse spans its long axis: row 20, columns 10 to 40.
    assert labels[20, 11] == 1 and labels[20, 39] == 1 and labels[20, 45] != 1


def test_library_warnings_reach_the_user_as_one_line(deeplesion_folder, tmp_path, capsys):
    rows = (deeplesion_folder / "DL_info.csv").read_text().splitlines()
    # A fourth row whose short axis lies along its long axis: not a RECIST, skipped.
    bad = rows[1].replace('"11, 21, 41, 21, 26, 16, 26, 26"', '"11, 21, 41, 21, 20, 21, 30, 21"')
    assert bad != rows[1]
    table_path = tmp_path / "DL_info.csv"
    table_path.write_text("\n".join([*rows, bad]) + "\n")
    out = tmp_path / "groups.csv"
    assert main(["groups", str(table_path), "--k", "2", "--out", str(out)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("recist-seg groups: warning: DL_info.csv: skipped 1 row(s)")
    assert "row 4" in err[0]
    assert len(read_recists(out)) == 3


def test_groups_refuse_to_replace_files_without_overwrite(tmp_path, capsys):
    data = make_isic_folder(tmp_path / "data", n=6)
    out = tmp_path / "precious.csv"
    out.write_text("a user's own file\n")
    assert main(["groups", str(data), "--k", "2", "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "a user's own file\n"
    assert not out.with_suffix(".grouping.json").exists()
    # The grouping file beside it is the user's too.
    out.unlink()
    model = out.with_suffix(".grouping.json")
    model.write_text("{}")
    assert main(["groups", str(data), "--k", "2", "--out", str(out)]) == 2
    assert model.read_text() == "{}" and not out.exists()
    assert main(["groups", str(data), "--k", "2", "--out", str(out), "--overwrite"]) == 0
    assert len(read_recists(out).features["group"]) == 6
    assert json.loads(model.read_text())["k"] == 2


def test_pseudo_masks_find_images_through_images_and_keep_names_inside(tmp_path, capsys):
    data = make_isic_folder(tmp_path / "data", n=3)
    out = tmp_path / "o"
    main(["pseudo-masks", str(data), "--out", str(out)])
    table = out / "recists.csv"
    # The table names each image by its path in the folder; moved elsewhere, it needs it.
    text = table.read_text()
    assert ",images/ISIC_0000001.png," in text
    # So it is a lesion table to train on as it is, given the folder.
    from napari_recist_seg.data.recist_sources import read_lesion_table

    assert len(read_lesion_table(table, data).rows) == 3
    moved = tmp_path / "tables" / "t.csv"
    moved.parent.mkdir()
    moved.write_text(text)
    assert main(["pseudo-masks", str(moved), "--out", str(tmp_path / "a")]) == 2
    assert "--images DIR" in capsys.readouterr().err
    assert main(["pseudo-masks", str(moved), "--out", str(tmp_path / "a"), "--images",
                 str(data)]) == 0
    assert (tmp_path / "a" / "ISIC_0000001_ellipse.png").is_file()
    # A name leading outside the folder is refused even with --shape.
    escaped = tmp_path / "tables" / "e.csv"
    escaped.write_text(text.replace(",images/ISIC_0000001.png,", ",../x/ISIC_0000001.png,"))
    assert main(["pseudo-masks", str(escaped), "--out", str(tmp_path / "b"), "--shape", "64",
                 "64"]) == 2
    assert "must be a path inside" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_an_unknown_option_is_shown_with_the_subcommand_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pseudo-masks", "x.csv", "--out", "o", "--bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: recist-seg pseudo-masks" in err and "unrecognized arguments: --bogus" in err


def test_pseudo_masks_and_groups_leave_out_a_picture_without_a_lesion(tmp_path, capsys):
    import imageio.v3 as iio

    data = make_isic_folder(tmp_path / "data", n=4)
    empty = data / "masks" / "ISIC_0000001_segmentation.png"
    iio.imwrite(empty, np.zeros_like(iio.imread(empty)))
    capsys.readouterr()
    assert main(["pseudo-masks", str(data), "--out", str(tmp_path / "pm")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: 1 mask in" in err and "was skipped: ISIC_0000001" in err
    assert len(read_recists(tmp_path / "pm" / "recists.csv")) == 3
    assert not (tmp_path / "pm" / "ISIC_0000001_ellipse.png").exists()
    assert main(["groups", str(data), "--k", "2", "--out", str(tmp_path / "g.csv")]) == 0
    assert "was skipped" in capsys.readouterr().err
    assert len(read_recists(tmp_path / "g.csv")) == 3


def test_progress_in_a_log_file_is_a_few_whole_lines(capsys):
    # A batch job's output is a file: no carriage-return redraws piled on one line.
    from napari_recist_seg.commands._progress import progress

    for _ in progress(range(500), "counting", unit="item"):
        pass
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert 1 <= len(lines) <= 3 and lines[-1].startswith("counting: 100%")


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["groups", "--help"]])
def test_the_command_starts_without_the_learning_layer_when_it_needs_none(argv):
    # A scripted call on a shared server should not pay seconds of torch import for a
    # version string or a geometry command's help.
    import subprocess
    import sys

    code = (f"import sys\nfrom napari_recist_seg.cli import main\ntry:\n    main({argv!r})\n"
            "except SystemExit:\n    pass\nprint('torch loaded:', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "torch loaded: False" in out


def test_ctrl_c_while_the_command_loads_is_one_line_and_code_130(monkeypatch, capsys):
    from napari_recist_seg import cli

    def loading(argv):
        raise KeyboardInterrupt  # as a Ctrl+C lands while torch is being imported

    monkeypatch.setattr(cli, "_command", loading)
    assert cli.main(["train", "data", "--out", "runs"]) == 130
    assert capsys.readouterr().err == "recist-seg: interrupted\n"


def test_model_kinds_are_read_as_the_readme_writes_them():
    from napari_recist_seg.commands.learning import _models

    assert _models("A1, Multitask") == ["a1", "multitask"]
    assert len(_models("ALL")) > 3


def test_table_options_given_for_an_image_folder_are_refused(tmp_path, capsys):
    data = make_isic_folder(tmp_path / "data", n=4)
    code = main(["train", str(data), "--out", str(tmp_path / "runs"), "--models", "a1",
                 "--window", "soft-tissue", "--crop", "lesion", "--epochs", "1"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert (f"--window and --crop apply to lesion tables (DL_info.csv, a RECIST .csv/.json); "
            f"{data} is an image+mask folder") in err
    assert not (tmp_path / "runs" / "a1").exists()
