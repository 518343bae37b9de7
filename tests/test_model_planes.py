"""The planes a model reads from an image layer: a slice with its neighbours as channels for
models trained on lesion tables, found in the table's series files, in a volume's adjacent
planes, or by repeating a lone slice."""

import numpy as np

from napari_recist_seg.plugin.model_planes import LayerPlanes
from napari_recist_seg.plugin.reader import read_path

from ._recist_table_data import DL_SLICES, write_deeplesion


def _opened(table):
    (data, kwargs, kind), *_ = read_path(str(table))
    assert kind == "image"
    return np.asarray(data), kwargs["metadata"]


def test_a_deeplesion_stack_gives_each_key_slice_with_its_series_neighbours(tmp_path):
    table = write_deeplesion(tmp_path / "dl")
    data, metadata = _opened(table)
    assert metadata["deeplesion_table"] == str(table.resolve())
    planes = LayerPlanes(data, False, metadata)
    for z, (_patient, key, neighbours, lesions, _split) in enumerate(DL_SLICES):
        stack, axis = planes.plane(z, context=1)
        assert axis == 0 and stack.shape == (3, *data.shape[1:])
        np.testing.assert_array_equal(stack[1], data[z])
        r, c, _rad = lesions[0]
        # Neighbour files have their discs 200 HU brighter; a missing one gives the key.
        brighter = [stack[k, r, c] - stack[1, r, c] for k in (0, 2)]
        assert brighter == [200.0 if key + d in neighbours else 0.0 for d in (-1, 1)]
    # Without the table's name (another reader's stack) the planes are those of a volume.
    stack, _ = LayerPlanes(data, False, {}).plane(1, context=1)
    np.testing.assert_array_equal(stack, data[[0, 1, 2]])


def test_a_live_preview_reads_a_table_slice_once_until_the_table_changes(tmp_path,
                                                                         monkeypatch):
    import os

    from napari_recist_seg.data import deeplesion

    table = write_deeplesion(tmp_path / "dl")
    data, metadata = _opened(table)
    reads = []
    real = deeplesion.read_deeplesion_slice
    monkeypatch.setattr(deeplesion, "read_deeplesion_slice",
                        lambda record, **kw: reads.append(record.file_name) or real(record, **kw))
    planes = LayerPlanes(data, False, metadata)
    first, _ = planes.plane(0, context=1)
    for _ in range(3):  # edits of lesions on the same slice
        again, _ = LayerPlanes(data, False, metadata).plane(0, context=1)
        np.testing.assert_array_equal(again, first)
    planes.plane(1, context=1)
    assert len(reads) == 2 and reads[0] != reads[1]
    # The shared stack cannot be changed by one of its users.
    assert not first.flags.writeable
    # A rewritten table is read again.
    stat = table.stat()
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    planes.plane(0, context=1)
    assert len(reads) == 3


def test_volume_planes_repeat_the_end_slice_and_lone_slices_repeat_themselves():
    volume = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32)
    planes = LayerPlanes(volume)
    assert [p[0, 0] for p in planes.plane(0, context=1)[0]] == [0, 0, 1]
    assert [p[0, 0] for p in planes.plane(4, context=2)[0]] == [2, 3, 4, 4, 4]
    lone, axis = LayerPlanes(volume[3]).plane(None, context=1)
    assert axis == 0 and lone.shape == (3, 4, 4) and (lone == 3).all()
    # Neighbours a gap in mm away: with 2.5 mm slices, 5 mm is two planes.
    spaced = LayerPlanes(volume, slice_mm=2.5)
    assert [p[0, 0] for p in spaced.plane(2, context=1, gap_mm=5.0)[0]] == [0, 2, 4]
    assert [p[0, 0] for p in spaced.plane(2, context=1, gap_mm=1.0)[0]] == [2, 2, 2]
    # Without context, and for colour images, the plane is given as it is.
    plane, axis = planes.plane(2)
    assert axis is None and plane.shape == (4, 4)
    rgb = np.zeros((2, 4, 4, 3), np.uint8)
    plane, axis = LayerPlanes(rgb, rgb=True).plane(1, context=1)
    assert axis is None and plane.shape == (4, 4, 3)


def test_compare_predicts_a_table_model_on_the_stack_opened_from_its_table(tmp_path,
                                                                          monkeypatch):
    from napari_recist_seg.plugin.training_job import prepare_torch_import

    # Earlier tests may have drawn with Mesa: torch is imported the plugin's way.
    prepare_torch_import()
    from napari_recist_seg.core.recist import Recist
    from napari_recist_seg.learning import inference
    from napari_recist_seg.plugin.comparison import predict_models
    from napari_recist_seg.plugin.model_registry import ModelEntry

    from ._learning_data import TABLE_SOURCE, crop_preprocessing, quick, saved_model
    from ._recist_table_data import disc_axes

    table = write_deeplesion(tmp_path / "dl")
    data, metadata = _opened(table)
    folder = saved_model(tmp_path / "model", "a1", in_channels=3,
                         preprocessing=crop_preprocessing(window=(-175.0, 275.0),
                                                          source=TABLE_SOURCE))
    entry = ModelEntry("table a1", "a1", str(folder), inference.load_model(folder))
    lesions = [(z, Recist(*disc_axes(*lesion)), f"{z}-{j}")
               for z, (*_, found, _split) in enumerate(DL_SLICES)
               for j, lesion in enumerate(found)]
    seen = {}
    real = inference.predict_detailed

    def spied(model, image, recists=None, **kwargs):
        seen[len(seen)] = (np.array(image), kwargs.get("channel_axis"))
        return real(model, image, recists, **kwargs)

    monkeypatch.setattr(inference, "predict_detailed", spied)
    with quick():
        (_, result), = predict_models([entry], data, lesions, metadata=metadata)
    assert result["mask"].shape == data.shape and len(seen) == len(DL_SLICES)
    first, axis = seen[0]
    assert axis == 0 and first.shape == (3, *data.shape[1:])
    # The first key slice's neighbours come from its series files (discs 200 HU brighter),
    # not from the next key slice of the stack, another patient's.
    r, c, _ = DL_SLICES[0][3][0]
    assert first[0, r, c] - first[1, r, c] == 200.0
    seen.clear()
    with quick():
        list(predict_models([entry], data, lesions))
    assert seen[0][0][0, r, c] == seen[0][0][1, r, c]  # a volume's first plane repeats


def test_the_context_of_a_model_comes_from_its_crops_or_its_table():
    from types import SimpleNamespace

    from napari_recist_seg.plugin.model_planes import context_of, slice_gap_of

    from ._learning_data import TABLE_SOURCE, crop_preprocessing

    def model(pre):
        return SimpleNamespace(preprocessing=pre)

    assert context_of(model(crop_preprocessing(source=TABLE_SOURCE))) == 1
    assert slice_gap_of(model(crop_preprocessing(source=TABLE_SOURCE))) == 2.0
    assert context_of(model(crop_preprocessing(context=2))) == 2
    assert context_of(model(crop_preprocessing())) == 0
    colour = {**TABLE_SOURCE, "colour": True}
    assert context_of(model(crop_preprocessing(source=colour))) == 0
    # A table of grey 8-bit key slices gives the network one channel: no neighbours.
    grey = {**TABLE_SOURCE, "kind": "recist", "in_channels": 1}
    assert context_of(model(crop_preprocessing(source=grey))) == 0
