"""`distnn predict`: real PNG, JPEG, BMP, .npy and HDF5 inputs give the probabilities of
distnn.api's Model.predict on the same pixels, in input order; a colour image is read as grey
for a 1-channel model (and a grey one as RGB for a 3-channel model); the same lines under
`mpiexec -n 2`; bad input is one stderr line and exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import distnn.api
from distnn.cli import main
from distnn.data import ArrayDataset, get_dataset, write_h5
from distnn.inference.images import InputError, list_inputs, read_image
from tests.train.runs import mpiexec, run, tiny_checkpoint

SHAPE = (28, 28, 1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """The tiny model (tests.train.runs.TINY_MODEL) after 20 steps on mini MNIST."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), 20)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Twelve mini MNIST test images, uint8 (12, 28, 28, 1)."""
    return get_dataset("mini_mnist", "test").read(np.arange(12))


def save(image: np.ndarray, path: Path) -> Path:
    """Write a uint8 (H, W, 1) or (H, W, 3) image with Pillow (format from the suffix)."""
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, digits) -> tuple[list[str], list[tuple[str, np.ndarray | None]]]:
    """The command's INPUTs, and the expected lines in order: (name, the pixels the model must
    see, or None for the JPEG, which is lossy)."""
    tmp = tmp_path_factory.mktemp("inputs")
    folder = tmp / "folder"
    folder.mkdir()
    save(digits[0], tmp / "a.png")
    save(digits[1], tmp / "b.jpg")
    save(digits[3], folder / "d.png")  # sorted by name: c.bmp before d.png
    save(digits[2], folder / "c.bmp")
    (folder / "notes.txt").write_text("not an image: skipped")
    np.save(tmp / "arr.npy", digits[4:7])  # uint8 (3, 28, 28, 1)
    grey = digits[7:9, :, :, 0].astype(np.float32) / 255  # float (2, 28, 28), 0..1
    np.save(tmp / "flt.npy", grey)
    write_h5(tmp / "set.h5", {"test": ArrayDataset(digits[9:12], np.zeros(3, np.int64),
                                                   [str(i) for i in range(10)], "d", "test")},
             "d", "test images")
    args = [tmp / "a.png", tmp / "b.jpg", f"{folder}/", tmp / "arr.npy", tmp / "flt.npy",
            tmp / "set.h5"]
    expected = [(str(tmp / "a.png"), digits[:1]), (str(tmp / "b.jpg"), None),
                (str(folder / "c.bmp"), digits[2:3]), (str(folder / "d.png"), digits[3:4])]
    expected += [(f"{tmp / 'arr.npy'}[{i}]", digits[4 + i:5 + i]) for i in range(3)]
    expected += [(f"{tmp / 'flt.npy'}[{i}]", grey[i:i + 1, :, :, None]) for i in range(2)]
    expected += [(f"{tmp / 'set.h5'}[{i}]", digits[9 + i:10 + i]) for i in range(3)]
    return [str(a) for a in args], expected


@pytest.fixture(scope="module")
def one_process(ckpt, inputs):
    """`distnn predict CKPT INPUTS --top 2 --json --batch 3` in one process."""
    done = run(["predict", str(ckpt), *inputs[0], "--top", "2", "--json", "--batch", "3"])
    assert done.returncode == 0, done.stderr
    return done


def test_json_lines_are_the_models_probabilities_in_input_order(ckpt, inputs, one_process):
    model = distnn.api.load(ckpt)
    lines = [json.loads(line) for line in one_process.stdout.splitlines()]
    assert [line["input"] for line in lines] == [name for name, _ in inputs[1]]
    for line, (name, pixels) in zip(lines, inputs[1], strict=True):
        top = line["top"]
        assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"], name
        assert all(t["class"] == model.class_names[t["index"]] for t in top), name
        if pixels is None:  # the JPEG: lossy, so only a well-formed line
            assert 0.5 < sum(t["probability"] for t in top) <= 1 + 1e-9
            continue
        p = model.predict(pixels)[0]
        assert [t["index"] for t in top] == list(np.argsort(-p, kind="stable")[:2]), name
        np.testing.assert_allclose([t["probability"] for t in top],
                                   p[[t["index"] for t in top]], rtol=0, atol=1e-6)


def test_the_same_lines_under_mpiexec(ckpt, inputs, one_process):
    mpiexec()
    done = run(["predict", str(ckpt), *inputs[0], "--top", "2", "--json", "--batch", "3"],
               ranks=2)
    assert done.returncode == 0, done.stderr
    assert done.stdout == one_process.stdout  # 12 images in 4 batches: 2 batches per rank
    # A corrupt file only rank 1 reads (the last batch): every rank ends, one line, exit 2.
    bad = Path(inputs[0][0]).parent / "corrupt.png"
    bad.write_bytes(np.random.default_rng(2).bytes(300))
    done = run(["predict", str(ckpt), *inputs[0], str(bad), "--batch", "3"], ranks=2,
               timeout=120)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.splitlines() == [f"distnn predict: {bad}: not a readable image "
                                        f"(UnidentifiedImageError: cannot identify image file "
                                        f"'{bad}')"], done.stderr


def test_a_colour_image_is_read_as_grey_for_a_one_channel_model(ckpt, digits, tmp_path):
    """A grey digit saved as RGB (R = G = B) reads back as the digit: Pillow's "L" is
    (19595 R + 38470 G + 7471 B + 32768) >> 16, and the weights sum to 65536. Default output:
    `NAME  CLASS P  CLASS P  CLASS P`."""
    path = save(np.repeat(digits[5], 3, axis=-1), tmp_path / "rgb.png")
    done = run(["predict", str(ckpt), str(path)])
    assert done.returncode == 0, done.stderr
    fields = done.stdout.rstrip("\n").split("  ")
    assert fields[0] == str(path) and len(fields) == 4, done.stdout
    p = distnn.api.load(ckpt).predict(digits[5:6])[0]
    order = np.argsort(-p, kind="stable")[:3]
    assert [f.split(" ")[0] for f in fields[1:]] == [str(i) for i in order]  # mini MNIST: 0..9
    np.testing.assert_allclose([float(f.split(" ")[1]) for f in fields[1:]], p[order],
                               atol=5e-5)


def test_colour_conversion_to_the_models_channels(tmp_path):
    """RGB -> L by ITU-R 601-2 luma (0.299 R + 0.587 G + 0.114 B, to within Pillow's
    rounding); L -> RGB repeats the grey value in the three channels."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
    grey = read_image(save(rgb, tmp_path / "rgb.png"), SHAPE)
    assert grey.shape == SHAPE and grey.dtype == np.uint8
    luma = rgb.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert np.abs(grey[..., 0] - luma).max() <= 0.51
    flat = rng.integers(0, 256, size=(28, 28, 1), dtype=np.uint8)
    colour = read_image(save(flat, tmp_path / "grey.png"), (28, 28, 3))
    np.testing.assert_array_equal(colour, np.repeat(flat, 3, axis=-1))


def test_deep_and_truncated_images_are_refused(tmp_path):
    """16-bit pixels would be clipped by a conversion to 8 bits: refused. A PNG cut short
    opens (its header is whole) and fails to decode: refused, naming the file."""
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((28, 28), 40000, np.uint16)).save(deep)
    with pytest.raises(InputError, match=r"deep.png: image of mode I.*expected 8-bit"):
        read_image(deep, SHAPE)
    whole = save(np.random.default_rng(3).integers(0, 256, SHAPE, np.uint8), tmp_path / "w.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:200])
    with pytest.raises(InputError, match=r"cut.png: not a readable image"):
        read_image(cut, SHAPE)


def test_reading_images_without_pillow_names_the_install(tmp_path, monkeypatch):
    path = save(np.zeros(SHAPE, np.uint8), tmp_path / "a.png")
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` now raises ImportError
    with pytest.raises(InputError, match=r"pip install 'distnn\[images\]'"):
        list_inputs([str(path)], SHAPE)


def test_an_image_of_another_size_is_refused_with_exit_2(ckpt, tmp_path):
    big = save(np.zeros((32, 32, 1), np.uint8), tmp_path / "big.png")
    done = run(["predict", str(ckpt), str(save(np.zeros(SHAPE, np.uint8), tmp_path / "ok.png")),
                str(big)])
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr == f"distnn predict: {big}: image of 32x32 pixels, expected 28x28 (the " \
                          f"model's input; resize it first)\n"


@pytest.mark.parametrize("case", ["corrupt", "not a checkpoint", "missing", "top 0",
                                  "rgb array", "float range"])
def test_bad_input_is_one_line_and_exit_2(ckpt, tmp_path, capsys, case):
    """In this process (distnn.cli.main, as the `distnn` script runs it): the exit code it
    returns and what it writes."""
    good = str(save(np.zeros(SHAPE, np.uint8), tmp_path / "ok.png"))
    model, inputs, extra = str(ckpt), [good], []
    if case == "corrupt":
        (tmp_path / "bad.png").write_bytes(np.random.default_rng(1).bytes(300))
        inputs.append(str(tmp_path / "bad.png"))
        expected = f"{tmp_path / 'bad.png'}: not a readable image"
    elif case == "not a checkpoint":
        model = good
        expected = f"{good}: not a readable distnn checkpoint"
    elif case == "missing":
        inputs.append(str(tmp_path / "gone.png"))
        expected = f"{tmp_path / 'gone.png'}: no such file or folder"
    elif case == "top 0":
        extra = ["--top", "0"]
        expected = "--top 0: expected >= 1"
    elif case == "rgb array":
        np.save(tmp_path / "rgb.npy", np.zeros((2, 28, 28, 3), np.uint8))
        inputs.append(str(tmp_path / "rgb.npy"))
        expected = f"{tmp_path / 'rgb.npy'}: array of shape (2, 28, 28, 3), expected (N, 28, " \
                   f"28, 1)"
    else:
        np.save(tmp_path / "255.npy", np.full((2, 28, 28, 1), 255, np.float32))
        inputs.append(str(tmp_path / "255.npy"))
        expected = f"{tmp_path / '255.npy'}[0]: float pixel value 255, expected floats in 0..1"
    code = main(["predict", model, *inputs, *extra])
    out, err = capsys.readouterr()
    assert code == 2 and out == "", err
    assert len(err.splitlines()) == 1 and err.startswith(f"distnn predict: {expected}"), err
