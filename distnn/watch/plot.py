"""distnn plot RUN_DIR [RUN_DIR ...]: PNG figures and an index.html from run directories.

Figures (one PNG each, in --out, default <first RUN_DIR>/plots): loss.png, accuracy.png, lr.png,
update_ratio.png, activations.png, filters.png (the first conv layer of the first run's best.h5,
else last.h5). Several runs are overlaid, named by their directories. index.html shows every
figure, says why any was skipped, and lists the runs' warning lines. A run in progress plots
too: an incomplete last line of metrics.jsonl is ignored. Needs the `plot` extra (matplotlib).
"""

from __future__ import annotations

import argparse
import html
import io
import json
from pathlib import Path

import yaml

from distnn import console
from distnn.exit_codes import ExitCode
from distnn.train.checkpoint import load_checkpoint, replace_atomically
from distnn.train.errors import CheckpointError
from distnn.watch import figures
from distnn.watch.figures import Drawn, Run
from distnn.watch.filters import Weights, build_filters

PROG = "distnn plot"
SPLITS = ("train", "val", "step", "layers", "warning")  # any other split is ignored
CHECKPOINTS = ("best.h5", "last.h5")  # in <run>/checkpoints/, in order of preference
NAMES = ("loss", "accuracy", "lr", "update_ratio", "activations", "filters")
TITLES = {"loss": "Loss", "accuracy": "Accuracy", "lr": "Learning rate",
          "update_ratio": "Update ratio per layer", "activations": "Activations",
          "filters": "First conv layer's filters"}


class BadInput(Exception):
    """One line for the user: the run directory or argument that is wrong, and how."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run directories (holding metrics.jsonl); several are overlaid")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where the PNGs and index.html go (default: <first RUN_DIR>/plots)")
    parser.add_argument("--layers", metavar="NAME[,NAME...]",
                        help="only these layers in the per-layer figures (update ratio, "
                             "activations, filters)")


def read_metrics(path: Path) -> tuple[dict[str, list[dict]], list[str]]:
    """metrics.jsonl's lines by split, and notes. An unparsable last line is a line being
    written (ignored, noted); an unparsable line before it means the file is corrupt."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{path.parent}: no metrics.jsonl (not a run directory, or its run has "
                       f"not logged anything yet)") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read it: {exc.strerror or exc}") from None
    numbered = [(no, text) for no, text in enumerate(data.split(b"\n"), 1) if text.strip()]
    if not numbered:
        raise BadInput(f"{path}: empty (no lines yet)")
    lines: dict[str, list[dict]] = {}
    notes = []
    for k, (no, text) in enumerate(numbered):
        try:
            record = json.loads(text)
            problem = "" if isinstance(record, dict) else f"a JSON {type(record).__name__}"
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            problem = f"not valid JSON: {getattr(exc, 'msg', None) or exc}"
        if problem:
            if k == len(numbered) - 1:
                if k == 0:
                    raise BadInput(f"{path}: no complete line yet (line 1 is {problem})")
                notes.append(f"line {no} of metrics.jsonl is incomplete (still being "
                             f"written?): ignored")
                break
            raise BadInput(f"{path} line {no}: {problem}, expected one JSON object per line "
                           f"(the file is corrupt)")
        if record.get("split") in SPLITS:
            lines.setdefault(record["split"], []).append(record)
    return lines, notes


def model_layers(path: Path) -> list[str]:
    """Layer names in model order from config.yaml (names as the model gives them: `name`, else
    <type><index>); [] when the file is absent or unreadable (the plots do not need it)."""
    try:
        model = yaml.safe_load(path.read_text()).get("model")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return []
    if not isinstance(model, list):
        return []
    return [spec["name"] if isinstance(spec.get("name"), str) else f"{spec.get('type')}{i}"
            for i, spec in enumerate(model) if isinstance(spec, dict)]


def run_labels(paths: list[Path]) -> list[str]:
    """Legend names: each directory's name, with more of its path where names repeat."""
    full = [p.resolve().parts for p in paths]
    depth = [1] * len(paths)
    labels = ["/".join(parts[-1:]) for parts in full]
    while True:
        repeated = [i for i, lb in enumerate(labels) if depth[i] < len(full[i]) and any(
            other == lb and full[j] != full[i] for j, other in enumerate(labels))]
        if not repeated:
            break
        for i in repeated:
            depth[i] += 1
            labels[i] = "/".join(full[i][-depth[i]:]).lstrip("/")
    seen: dict[str, int] = {}
    for i, lb in enumerate(labels):  # the same directory given twice
        seen[lb] = seen.get(lb, 0) + 1
        if seen[lb] > 1:
            labels[i] = f"{lb} ({seen[lb]})"
    return labels


def read_run(path: Path, label: str) -> Run:
    if not path.exists():
        raise BadInput(f"{path}: no such run directory")
    if not path.is_dir():
        raise BadInput(f"{path}: not a directory (expected a run directory)")
    lines, notes = read_metrics(path / "metrics.jsonl")
    return Run(path, label, lines, model_layers(path / "config.yaml"), notes)


def known_layers(runs: list[Run]) -> list[str]:
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.model_layers))
        for line in run.of("layers"):
            if isinstance(line.get("layers"), dict):
                names.update(dict.fromkeys(line["layers"]))
    return list(names)


def selected_layers(text: str | None, runs: list[Run]) -> list[str] | None:
    """The --layers names (None: all), each checked against the layers the runs know."""
    if text is None:
        return None
    wanted = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not wanted:
        raise BadInput("--layers: no layer name given")
    known = known_layers(runs)
    unknown = [n for n in wanted if n not in known]
    if unknown:
        listed = ", ".join(known) or "none (no config.yaml model and no layers lines)"
        raise BadInput(f"--layers: unknown layer {', '.join(unknown)}; known layers: {listed}")
    return wanted


def find_weights(run: Run, wanted: list[str] | None) -> Weights | str:
    """The first conv layer's weights (the first of `wanted`, if given) from best.h5, else
    last.h5; or why there are none."""
    problems = []
    for name in CHECKPOINTS:
        path = run.path / "checkpoints" / name
        if not path.exists():
            continue
        try:
            snap = load_checkpoint(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        convs = [spec.get("name") or f"conv{i}" for i, spec in enumerate(snap.model_spec)
                 if isinstance(spec, dict) and spec.get("type") == "conv"]
        if not convs:
            return f"checkpoints/{name}: the model has no conv layer"
        if wanted is not None:
            convs = [c for c in convs if c in wanted]
            if not convs:
                return f"none of --layers ({', '.join(wanted)}) is a conv layer"
        W = snap.model.get(f"{convs[0]}.W")
        if W is None or W.ndim != 4:
            return f"checkpoints/{name}: no 4-d array {convs[0]}.W"
        notes = [f"not used: {p}" for p in problems]
        return Weights(convs[0], f"{run.label}/checkpoints/{name}", W, notes)
    if problems:
        return "no readable checkpoint: " + "; ".join(problems)
    return "no checkpoint yet (no checkpoints/best.h5 or checkpoints/last.h5)"


def _figure_html(drawn: Drawn) -> str:
    parts = [f'<h2 id="{drawn.name}">{html.escape(TITLES[drawn.name])}</h2>']
    if drawn.fig is None:
        parts.append(f'<p class="skipped">{drawn.name}.png skipped: '
                     f'{html.escape(drawn.skipped)}</p>')
    else:
        parts += [f"<p>{html.escape(line)}</p>" for line in drawn.caption]
        parts.append(f'<img src="{drawn.name}.png" alt="{drawn.name}">')
    return "\n".join(parts)


def _warnings_html(runs: list[Run]) -> str:
    rows = [(run.label, w) for run in runs for w in run.of("warning")]
    if not rows:
        return "<p>No warning lines.</p>"
    head = "".join(f"<th>{c}</th>" for c in ("run", "epoch", "step", "warning", "layer",
                                                 "message"))
    body = []
    for label, w in rows:
        cells = [label, w.get("epoch", ""), w.get("step", ""), w.get("warning", ""),
                 w.get("layer", ""), w.get("message", "")]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
                    + "</tr>")
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table>"


def index_html(runs: list[Run], drawn: list[Drawn]) -> str:
    run_items = []
    for run in runs:
        notes = "".join(f"; {html.escape(n)}" for n in run.notes)
        run_items.append(f"<li><b>{html.escape(run.label)}</b>: "
                         f"{html.escape(str(run.path))}{notes}</li>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:1em auto}"
             "img{max-width:100%;border:1px solid #ddd}.skipped{color:#a40}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
             "text-align:left}")
    return "\n".join([
        "<!doctype html>", '<html><head><meta charset="utf-8">',
        f"<title>distnn plot: {html.escape(', '.join(r.label for r in runs))}</title>",
        f"<style>{style}</style></head><body>", "<h1>distnn plot</h1>",
        "<h2>Runs</h2>", "<ul>", *run_items, "</ul>",
        *[_figure_html(d) for d in drawn],
        '<h2 id="warnings">Warnings</h2>', _warnings_html(runs),
        "</body></html>", ""])


def png_bytes(drawn: Drawn) -> bytes:
    assert drawn.fig is not None
    buf = io.BytesIO()
    drawn.fig.savefig(buf, format="png")
    return buf.getvalue()


def write_outputs(out: Path, runs: list[Run], drawn: list[Drawn]) -> None:
    """Each PNG, then index.html, written to a temp name and os.replace'd (a reader never sees
    half a file); the PNG of a figure skipped now but drawn before is removed."""
    for d in drawn:
        path = out / f"{d.name}.png"
        if d.fig is not None:
            replace_atomically(path, png_bytes(d))
        else:
            path.unlink(missing_ok=True)
    replace_atomically(out / "index.html", index_html(runs, drawn).encode())


def use_agg(prog: str) -> bool:
    """matplotlib on its Agg backend; False (one line said) when it is not installed."""
    try:
        import matplotlib
    except ImportError:
        console.err(f"{prog}: needs matplotlib: pip install 'distnn[plot]'")
        return False
    matplotlib.use("Agg")
    return True


def main(args: argparse.Namespace) -> int:
    if not use_agg(PROG):
        return ExitCode.BAD_INPUT
    try:
        runs = [read_run(p, label) for p, label in zip(args.runs, run_labels(args.runs),
                                                         strict=True)]
        wanted = selected_layers(args.layers, runs)
        weights = find_weights(runs[0], wanted)
    except BadInput as exc:
        console.err(f"{PROG}: {exc}")
        return ExitCode.BAD_INPUT
    out = args.out if args.out is not None else args.runs[0] / "plots"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        console.err(f"{PROG}: --out {out}: cannot create it: {exc.strerror or exc}")
        return ExitCode.BAD_INPUT
    drawn = [figures.build_loss(runs), figures.build_accuracy(runs), figures.build_lr(runs),
             figures.build_update_ratio(runs, wanted), figures.build_activations(runs, wanted),
             build_filters(weights)]
    try:
        write_outputs(out, runs, drawn)
    except OSError as exc:
        console.err(f"{PROG}: cannot write into {out}: {exc.strerror or exc}")
        return ExitCode.WRITE_FAILED
    made = [d.name for d in drawn if d.fig is not None]
    print(f"{PROG}: {len(made)} figures and index.html in {out}", flush=True)
    for d in drawn:
        if d.fig is None:
            print(f"  skipped {d.name}.png: {d.skipped}", flush=True)
    return ExitCode.OK

