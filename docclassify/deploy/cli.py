"""``docclassify-predict bundle=DIR inputs=FOLDER_OR_GLOB output=preds.csv``: a folder of images -> a CSV.

No Hydra (a serving install has none): ``key=value`` arguments as the other commands take them,
checked here. One row per image file found (sorted by path): ``path, label, error``, the orientation
and skew columns, then one probability column per class. A file that cannot be read or decoded is
a row with an empty label and the reason in ``error``, never left out; the exit code is then 1
(0: every file predicted; 2: a usage error). The CSV is written atomically.
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from docclassify.errors import USAGE_EXIT_CODE, UserError, error_line

log = logging.getLogger("docclassify.predict")
PROG = "docclassify-predict"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")


class UsageError(UserError):
    pass


@dataclass
class Option:
    default: object
    kind: type
    help: str


def parse_args(argv: list[str], options: dict[str, Option], prog: str) -> dict:
    """``key=value`` arguments into typed values (unknown keys and bad values refused, naming them)."""
    values = {k: o.default for k, o in options.items()}
    for arg in argv:
        if arg in ("-h", "--help"):
            width = max(len(k) for k in options)
            lines = [f"usage: {prog} " + " ".join(f"{k}=..." for k in options), ""]
            lines += [f"  {k:<{width}}  {o.help} (default: {o.default})" for k, o in options.items()]
            print("\n".join(lines))
            raise SystemExit(0)
        key, sep, value = arg.partition("=")
        if not sep:
            raise UsageError(f"{arg!r}: expected key=value ({', '.join(options)})")
        if key not in options:
            raise UsageError(f"{key}: not an option; options: {', '.join(options)}")
        kind = options[key].kind
        if value.lower() in ("null", "none", "") and options[key].default is None:
            values[key] = None
            continue
        try:
            values[key] = int(value) if kind is int else float(value) if kind is float else \
                value.lower() in ("1", "true", "yes", "on") if kind is bool else value
        except ValueError:
            raise UsageError(f"{key}={value!r}: expected {kind.__name__}") from None
    missing = [k for k, o in options.items() if o.default is ... and values[k] is ...]
    if missing:
        raise UsageError(f"missing {', '.join(f'{k}=...' for k in missing)}")
    return values


def find_images(inputs: str) -> list[Path]:
    """A folder (its image files, recursively), a glob pattern or one file; sorted by path."""
    path = Path(inputs).expanduser()
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    elif path.is_file():
        found = [path]
    else:
        found = [Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
    if not found:
        raise UsageError(f"inputs={inputs}: no image files there (a folder is searched for "
                         f"{', '.join(IMAGE_SUFFIXES)} files; or give a glob such as 'scans/*.jpg')")
    return sorted(found)


def progress(total: int):
    """A progress bar on a terminal (tqdm, when installed), else nothing."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="img", disable=not sys.stderr.isatty(), file=sys.stderr)


def write_csv(path: Path, rows: list[list], header: list[str]) -> None:
    from docclassify.utils.io import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())


def predict_folder(bundle: str, inputs: str, output: str, batch_size: int = 32, threads: int | None = None,
                   chunk: int = 256) -> tuple[int, int]:
    """Predict every image of ``inputs`` with the bundle; write the CSV. Returns (images, failed)."""
    from docclassify.deploy.predictor import Predictor

    predictor = Predictor.from_bundle(bundle, threads=threads)
    files = find_images(inputs)
    bar = progress(len(files))
    rows, failed = [], 0
    for start in range(0, len(files), chunk):  # chunks: the decoded images of a folder need not fit in memory
        part = files[start:start + chunk]
        result = predictor.predict(part, batch_size=batch_size, on_error="skip", names=[str(p) for p in part])
        for i, path in enumerate(part):
            error = result.errors[i]
            failed += error is not None
            probs = [""] * len(result.classes) if error else [f"{p:.6g}" for p in result.probabilities[i]]
            rows.append([str(path), result.labels[i] or "", error or "", result.orientation[i] or "",
                         "" if result.skew[i] is None else f"{result.skew[i]:.2f}", *probs])
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()
    write_csv(Path(output).expanduser(), rows, ["path", "label", "error", "orientation", "skew", *predictor.classes])
    return len(files), failed


OPTIONS = {
    "bundle": Option(..., str, "the bundle folder (python -m docclassify.export ... output=DIR)"),
    "inputs": Option(..., str, "a folder of images (searched recursively), a glob pattern or one file"),
    "output": Option("predictions.csv", str, "the CSV to write"),
    "batch_size": Option(32, int, "images per forward pass"),
    "threads": Option(None, int, "intra-op threads per model (null: DOCCLASSIFY_THREADS, else every core)"),
}


def main(argv: list[str] | None = None) -> int:
    """The console script; returns the exit code (0, 1 when some files failed, 2 on a usage error)."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(levelname)s] %(message)s", datefmt="%H:%M:%S")
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv, OPTIONS, PROG)
        if args["batch_size"] < 1:
            raise UsageError(f"batch_size={args['batch_size']}: expected a positive integer")
        n, failed = predict_folder(args["bundle"], args["inputs"], args["output"], args["batch_size"], args["threads"])
    except UserError as exc:
        print(error_line(PROG, exc), file=sys.stderr, flush=True)
        return USAGE_EXIT_CODE
    log.info("%d image(s) -> %s%s", n, args["output"], f"; {failed} could not be read (see the error column)"
             if failed else "")
    return 1 if failed else 0


def console_main() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    console_main()
