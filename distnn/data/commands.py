"""`distnn data list | verify | download | convert`.

Exit codes: 0 success, 1 a dataset is missing or fails a check, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import time

from distnn import console
from distnn.data import catalog
from distnn.data.datasets import get_dataset
from distnn.data.errors import DataError
from distnn.data.fetch import ensure_files, missing_files, verify_md5
from distnn.data.hdf5 import write_h5
from distnn.exit_codes import ExitCode


def register_data_commands(subparsers) -> None:
    """Add `data` with its four subcommands to an argparse subparsers object."""
    data = subparsers.add_parser("data", help="list, verify, download or convert datasets")
    sub = data.add_subparsers(dest="data_command", required=True)
    names = ", ".join(catalog.SPECS)

    def common(p):
        p.add_argument("--data-dir", default=None, help="data directory (default: "
                       "$DISTNN_DATA_DIR, else ~/.cache/distnn)")
        return p

    common(sub.add_parser("list", help="known datasets and whether their files are present")
           ).set_defaults(func=cmd_list)
    p = common(sub.add_parser("verify", help="check md5 and parse every file"))
    p.add_argument("names", nargs="*", help=f"datasets (default: all present; from {names})")
    p.set_defaults(func=cmd_verify)
    p = common(sub.add_parser("download", help="download missing files, md5-checked"))
    p.add_argument("names", nargs="+", help=f"datasets ({names})")
    p.set_defaults(func=cmd_download)
    p = common(sub.add_parser("convert", help="write a dataset's splits to one HDF5 file"))
    p.add_argument("name", help=f"dataset ({names})")
    p.add_argument("--out", required=True, help="output .h5 file")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the md5 check (e.g. a re-packed archive; format checks still run)")
    p.set_defaults(func=cmd_convert)


def _specs(names):
    """The specs of `names`, or None after printing the unknown ones."""
    specs = [catalog.lookup(n) for n in names]
    unknown = [n for n, s in zip(names, specs, strict=True) if s is None]
    if unknown:
        console.err(f"distnn data: unknown dataset(s) {', '.join(unknown)}; expected "
                    f"{', '.join(catalog.SPECS)}")
        return None
    return specs


def cmd_list(args) -> int:
    print(f"data directory: {catalog.resolve_data_dir(args.data_dir)}")
    for spec in catalog.SPECS.values():
        folder = catalog.dataset_folder(spec, args.data_dir)
        missing = missing_files(spec, folder)
        if spec.bundled:
            status = "bundled"
        else:
            status = "present" if not missing else f"missing {len(missing)} of {len(spec.files)}"
        counts = " + ".join(f"{n} {s}" for s, n in spec.counts.items())
        h, w, c = spec.image_shape
        print(f"  {spec.name:14s} {h}x{w}x{c}  {counts:25s} {status:18s} {folder}")
    return ExitCode.OK


def _verify_one(spec, data_dir) -> str | None:
    """None if every file of `spec` passes md5 and parsing, else the error message."""
    folder = catalog.dataset_folder(spec, data_dir)
    try:
        for f in spec.files:
            verify_md5(folder / f.name, f.md5)
        for split in spec.splits:
            get_dataset(spec.name, split, data_dir, download=False)
    except DataError as exc:
        return str(exc)
    return None


def cmd_verify(args) -> int:
    specs = _specs(args.names)
    if specs is None:
        return ExitCode.BAD_INPUT
    explicit = bool(args.names)
    failed = False
    for spec in specs or catalog.SPECS.values():
        folder = catalog.dataset_folder(spec, args.data_dir)
        missing = missing_files(spec, folder)
        if missing:
            print(f"{spec.name}: MISSING {', '.join(str(folder / f.name) for f in missing)}")
            failed |= explicit  # without names, absent datasets are only reported
            continue
        t0 = time.perf_counter()
        error = _verify_one(spec, args.data_dir)
        if error:
            print(f"{spec.name}: FAILED {error}")
            failed = True
        else:
            print(f"{spec.name}: OK (md5 and format, {time.perf_counter() - t0:.1f} s)")
    return ExitCode.FAILED if failed else ExitCode.OK


def cmd_download(args) -> int:
    specs = _specs(args.names)
    if specs is None:
        return ExitCode.BAD_INPUT
    failed = False
    for spec in specs:
        if spec.bundled:
            print(f"{spec.name}: bundled with distnn, nothing to download")
            continue
        try:
            folder = ensure_files(spec, args.data_dir, download=True)
            for f in spec.files:
                verify_md5(folder / f.name, f.md5)
            print(f"{spec.name}: OK in {folder}")
        except DataError as exc:
            console.err(f"{spec.name}: FAILED {exc}")
            failed = True
    return ExitCode.FAILED if failed else ExitCode.OK


def cmd_convert(args) -> int:
    specs = _specs([args.name])
    if specs is None:
        return ExitCode.BAD_INPUT
    spec = specs[0]
    t0 = time.perf_counter()
    try:
        splits = {s: get_dataset(spec.name, s, args.data_dir, verify=not args.no_verify)
                  for s in spec.splits}
    except DataError as exc:
        console.err(f"distnn data convert: {exc}")
        return ExitCode.FAILED
    provenance = "\n".join(ds.provenance for ds in splits.values())
    path = write_h5(args.out, splits, spec.name, provenance)
    sizes = ", ".join(f"{s} {len(ds)}" for s, ds in splits.items())
    print(f"wrote {path} ({sizes}; {path.stat().st_size / 1e6:.1f} MB, "
          f"{time.perf_counter() - t0:.1f} s)")
    return ExitCode.OK


def main(argv=None) -> int:
    """`python -m distnn.data.commands ...`: the data commands without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="distnn")
    register_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
