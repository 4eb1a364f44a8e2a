"""`distnn knn`: the neighbour search and vote against a brute-force NumPy reference (full
distance matrix, np.lexsort by (distance, index), the vote written plainly), cross-validation
against a plain loop over fold_indices, the command on mini MNIST and on a features file, the
same lines under `mpiexec -n 2`, and the bad-input contract (exit 2, one stderr line)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from distnn.comm import create_communicator
from distnn.data import ArrayDataset, write_h5
from distnn.train.setup import fold_indices
from distnn.transfer import knn
from distnn.transfer.neighbours import choose_k, distances, merge, smallest, vote
from tests.train.runs import env, mpiexec

LOCAL = create_communicator("local")
SCRIPT = ("import sys, argparse; from distnn.transfer import knn; p = argparse.ArgumentParser(); "
          "knn.add_arguments(p); sys.exit(knn.main(p.parse_args(sys.argv[1:])))")
MINI = ["--dataset", "mini_mnist", "--train-size", "500", "--k", "1,3", "--folds", "3"]


def brute_distances(queries: np.ndarray, reference: np.ndarray, distance: str) -> np.ndarray:
    """(Q, N) float64 from the definition: sum of squared or absolute differences."""
    diff = queries[:, None, :].astype(np.float64) - reference[None, :, :].astype(np.float64)
    return (diff ** 2).sum(-1) if distance == "l2" else np.abs(diff).sum(-1)


def brute_order(dist_row: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Positions of one query's reference points by (distance, index)."""
    return np.lexsort((index, dist_row))


def plain_vote(near: np.ndarray) -> int:
    """Majority label; a tie goes to the tied label met first, nearest first."""
    counts = Counter(near.tolist())
    best = max(counts.values())
    return next(label for label in near.tolist() if counts[label] == best)


def brute_predict(reference, labels, queries, k, distance, index=None) -> np.ndarray:
    """Predictions (Q,) of `queries` against `reference` whose global indices are `index`."""
    index = np.arange(len(reference)) if index is None else index
    dist = brute_distances(queries, reference, distance)
    return np.array([plain_vote(labels[brute_order(row, index)[:k]]) for row in dist])


def integer_data(rng, n: int, dims: int, classes: int, top: int = 4):
    """Small integer-valued samples (many equal distances) and labels."""
    return (rng.integers(0, top, size=(n, dims)).astype(np.float64),
            rng.integers(0, classes, size=n))


def run_main(capsys, argv: list[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    knn.add_arguments(parser)
    code = knn.main(parser.parse_args(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def untimed(out: str) -> list[str]:
    """The printed lines without the rank count and the seconds."""
    return [re.sub(r", \d+ ranks?, [0-9.]+ s\)$", ")", line) for line in out.splitlines()]


def test_smallest_orders_by_distance_then_index_and_skips_excluded_points():
    dist = np.array([[3.0, np.inf, 1.0, 1.0, 3.0]])
    d, i = smallest(dist, 3, offset=10)
    assert d.tolist() == [[1.0, 1.0, 3.0]] and i.tolist() == [[12, 13, 10]]
    d, i = smallest(dist, 6, offset=10)  # 4 finite points: two unused slots
    assert d.tolist() == [[1.0, 1.0, 3.0, 3.0, np.inf, np.inf]]
    assert i.tolist() == [[12, 13, 10, 14, -1, -1]]


@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_distances_on_float_data_match_the_definition(distance):
    rng = np.random.default_rng(4)
    queries, reference = rng.normal(size=(7, 33)), rng.normal(size=(150, 33))  # > one L1 tile
    np.testing.assert_allclose(distances(queries, reference, None, distance),
                               brute_distances(queries, reference, distance), rtol=1e-12)


def test_merge_orders_candidates_by_distance_then_index():
    # Two shards' candidates: by (distance, index) (0, 9) (1, 3) (1, 7) (2, 1) (2, 5); (inf, -1)
    # is an unused slot.
    d, i, lab = merge(np.array([[2.0, 1.0, np.inf, 1.0, 2.0, 0.0]]),
                      np.array([[5.0, 7.0, -1.0, 3.0, 1.0, 9.0]]),
                      np.array([[50.0, 70.0, -1.0, 30.0, 10.0, 90.0]]), 5)
    assert d.tolist() == [[0.0, 1.0, 1.0, 2.0, 2.0]] and i.tolist() == [[9, 3, 7, 1, 5]]
    assert lab.tolist() == [[90, 30, 70, 10, 50]]


@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_shards_merged_give_the_k_nearest_of_the_whole_set(distance):
    """Three uneven shards, each's k nearest (global indices), merged as the ranks do: the k
    nearest of the whole set by (distance, index), ties across shard boundaries included."""
    rng = np.random.default_rng(3)
    reference, _ = integer_data(rng, 61, 6, 2, top=2)
    queries, _ = integer_data(rng, 9, 6, 2, top=2)
    parts = [smallest(distances(queries, reference[a:b], None, distance), 12, offset=a)
             for a, b in ((0, 5), (5, 33), (33, 61))]  # the first shard has fewer than k points
    d, i, _ = merge(np.hstack([p[0] for p in parts]), np.hstack([p[1] for p in parts]),
                    np.hstack([p[1] for p in parts]), 12)
    dist = brute_distances(queries, reference, distance)
    orders = np.array([brute_order(row, np.arange(61)) for row in dist])
    np.testing.assert_array_equal(i, orders[:, :12])
    np.testing.assert_array_equal(d, np.take_along_axis(dist, orders[:, :12], axis=1))


def test_vote_ties_go_to_the_label_met_first():
    # [2, 1, 1, 2]: two 2s and two 1s, the nearest is a 2. [3, 1, 1]: 1 has the majority.
    # [0, 4, 5]: all tied once, the nearest (0) wins.
    assert vote(np.array([[2, 1, 1, 2], [3, 1, 1, 9], [0, 4, 5, 6]])[:, :3]).tolist() == [1, 1, 0]
    assert vote(np.array([[2, 1, 1, 2], [3, 1, 1, 9]])).tolist() == [2, 1]


@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_search_and_vote_match_brute_force(distance):
    rng = np.random.default_rng(5)
    reference, labels = integer_data(rng, 300, 20, 5)
    queries, _ = integer_data(rng, 57, 20, 5)
    ks = [1, 2, 4, 7, 30]
    dist = brute_distances(queries, reference, distance)
    orders = np.array([brute_order(row, np.arange(300)) for row in dist])
    sorted_dist = np.take_along_axis(dist, orders, axis=1)
    assert (sorted_dist[:, :30] == sorted_dist[:, 1:31]).any()  # ties inside the k nearest
    assert (sorted_dist[:, 6] == sorted_dist[:, 7]).any()  # and at the boundary of k=7

    index, near_labels = knn.nearest(reference, labels, queries, 30, distance, LOCAL)
    np.testing.assert_array_equal(index, orders[:, :30])
    np.testing.assert_array_equal(near_labels, labels[orders[:, :30]])

    pred = knn.knn_predict(reference, labels, queries, ks, distance, LOCAL, block=16)
    for row, k in zip(pred, ks, strict=True):
        np.testing.assert_array_equal(row, brute_predict(reference, labels, queries, k, distance))
    by_count = [np.bincount(labels[o[:4]]).argmax() for o in orders]  # ties to the lowest label
    assert (pred[2] != by_count).any()  # the vote's tie rule decided some k=4 prediction


def test_cross_validation_matches_a_loop_over_the_folds():
    rng = np.random.default_rng(8)
    train, labels = integer_data(rng, 90, 12, 4)
    ks, folds, seed = [1, 3, 5, 8], 4, 3
    acc = knn.cross_validate(train, 0, train, labels, ks, folds, seed, "l2", LOCAL, block=7)
    correct = np.zeros(len(ks))
    for fold in range(folds):
        kept, held = fold_indices(90, folds, fold, seed)
        for j, k in enumerate(ks):
            pred = brute_predict(train[kept], labels[kept], train[held], k, "l2", index=kept)
            correct[j] += (pred == labels[held]).sum()
    np.testing.assert_array_equal(acc, correct / 90)
    assert len(set(acc.tolist())) > 1
    assert choose_k([1, 3, 5], np.array([0.5, 0.7, 0.7])) == 3


def features_file(tmp_path, n_train: int = 101, n_test: int = 33):
    """A distnn HDF5 file of small integer-valued samples (4, 5, 1) with many equal distances;
    returns (path, train images, train labels, test images, test labels)."""
    rng = np.random.default_rng(2)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 3, size=(n, 4, 5, 1), dtype=np.uint8)
        data[split] = ArrayDataset(images, rng.integers(0, 3, size=n), ["a", "b", "c"], "ties",
                                   split)
    path = write_h5(tmp_path / "features.h5", data, "ties", "random test data")
    return (path, data["train"].images, data["train"].labels, data["test"].images,
            data["test"].labels)


def test_the_command_on_a_features_file_matches_brute_force(tmp_path, capsys):
    path, train, labels, test, test_labels = features_file(tmp_path)
    args = ["--features", str(path), "--k", "1,4,9", "--folds", "3", "--distance", "l1",
            "--train-size", "80", "--seed", "4"]
    code, out, err = run_main(capsys, args)
    assert (code, err) == (0, "")
    subset = np.sort(np.random.default_rng([4, 11]).permutation(101)[:80])
    x, y = train[subset].reshape(80, -1), labels[subset]
    expected, accs = [], []
    for k in (1, 4, 9):
        correct = 0
        for fold in range(3):
            kept, held = fold_indices(80, 3, fold, 4)
            pred = brute_predict(x[kept], y[kept], x[held], k, "l1", index=kept)
            correct += int((pred == y[held]).sum())
        accs.append(correct / 80)
        expected.append(f"k={k}  cv accuracy {correct / 80:.4f}  (3 folds of 80 training "
                        f"samples, l1)")
    chosen = (1, 4, 9)[int(np.argmax(accs))]
    test_acc = np.mean(brute_predict(x, y, test.reshape(33, -1), chosen, "l1") == test_labels)
    expected.append(f"chosen k={chosen}  test accuracy {test_acc:.4f}  n 33  (80 training "
                    f"samples, l1)")
    assert untimed(out) == expected


def test_mini_mnist(capsys):
    code, out, err = run_main(capsys, MINI)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 3
    for k, line in zip((1, 3), lines, strict=False):
        assert re.fullmatch(rf"k={k}  cv accuracy 0\.\d{{4}}  \(3 folds of 500 training samples, "
                            r"l2\)", line), line
    m = re.fullmatch(r"chosen k=(\d+)  test accuracy ([0-9.]+)  n 2000  \(500 training "
                     r"samples, l2, 1 rank, [0-9.]+ s\)", lines[2])
    assert m, lines[2]
    assert int(m[1]) in (1, 3) and 0.5 < float(m[2]) <= 1.0


def mpi_run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([mpiexec(), "-n", "2", sys.executable, "-c", SCRIPT, *args],
                          capture_output=True, text=True, timeout=120, env=env())


@pytest.mark.parametrize("case", ["mini_mnist", "ties"])
def test_two_ranks_print_the_same_lines(case, tmp_path, capsys):
    mpiexec()
    args = MINI if case == "mini_mnist" else [
        "--features", str(features_file(tmp_path)[0]), "--k", "1,2,5", "--folds", "4",
        "--distance", "l1", "--train-size", "99"]  # odd: shards of 50 and 49 points
    code, out, _ = run_main(capsys, args)
    assert code == 0
    two = mpi_run(args)
    assert two.returncode == 0, two.stderr
    assert untimed(two.stdout) == untimed(out)
    assert ", 1 rank, " in out and ", 2 ranks, " in two.stdout


def test_bad_input_under_two_ranks_ends_both_with_exit_2():
    mpiexec()
    out = mpi_run(["--dataset", "mini_mnist", "--train-size", "50", "--k", "3,60", "--folds",
                   "2"])
    assert out.returncode == 2, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 2 and "Traceback" not in out.stderr, out.stderr
    for rank in (0, 1):
        assert (f"distnn knn [rank {rank}]: --k 3,60: k=60 is larger than the 25 reference "
                "samples of a cross-validation fold; expected k <= 25") in lines


@pytest.mark.parametrize("argv,expected", [
    (["--dataset", "mini_mnist", "--train-size", "100", "--k", "101", "--folds", "0"],
     "--k 101: k=101 is larger than the 100 reference samples; expected k <= 100"),
    (["--dataset", "mini_mnist", "--train-size", "100", "--k", "1,90", "--folds", "5"],
     "--k 1,90: k=90 is larger than the 80 reference samples of a cross-validation fold; "
     "expected k <= 80"),
    (["--dataset", "mini_mnist", "--k", "1,3", "--folds", "0"],
     "--k 1,3 with --folds 0: no cross-validation chooses among 2 values; expected one k"),
    (["--dataset", "mini_mnist", "--features", "f.h5"],
     "--dataset mini_mnist and --features f.h5 both given; expected exactly one of"),
    ([], "neither --dataset nor --features given; expected exactly one of --dataset NAME or "
         "--features FILE.h5"),
    (["--features", "MISSING"], "--features MISSING: no such file; expected a distnn HDF5 file"),
    (["--dataset", "mini_mnist", "--k", "1,x"], "--k 1,x: 'x' is not an integer; expected"),
    (["--dataset", "mini_mnist", "--k", "0,3"], "--k 0,3: k=0 is not positive; expected"),
    (["--dataset", "mini_mnist", "--k", "3,1,3"], "--k 3,1,3: k=3 is repeated; expected"),
    (["--dataset", "mini_mnist", "--folds", "1"], "--folds 1: expected 0 (no cross-validation)"),
    (["--dataset", "mini_mnist", "--train-size", "20", "--k", "1", "--folds", "21"],
     "--folds 21: more folds than the 20 training samples; expected 2 <= folds <= 20"),
    (["--dataset", "mini_mnist", "--train-size", "8001"],
     "--train-size 8001: the training split has 8000 samples; expected 0 (all) to 8000"),
])
def test_bad_input_is_one_line_and_exit_2(argv, expected, tmp_path, capsys):
    missing = str(tmp_path / "missing.h5")
    code, out, err = run_main(capsys, [missing if a == "MISSING" else a for a in argv])
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("distnn knn: "), err
    assert expected.replace("MISSING", missing) in err, err


def test_an_unknown_distance_is_refused_by_argparse():
    parser = argparse.ArgumentParser()
    knn.add_arguments(parser)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--dataset", "mini_mnist", "--distance", "cosine"])
    assert exc.value.code == 2
