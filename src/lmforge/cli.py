"""The `lmforge` command: use any model folder of the chain without writing Python.

    lmforge predict models/quantized "a great film, but far too long" "not bad at all"
    lmforge predict models/quantized --file reviews.csv --text-column review --output predictions.jsonl
    lmforge generate models/student "The movie" --max-new-tokens 30 --temperature 0.8 --seed 1
    lmforge info models/pruned

A user error (a missing or empty file, a missing column, a folder that is not a complete model
folder) prints one line, `error: ...`, and exits with status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from lmforge.errors import DataError, LmforgeError

FILE_TYPES = (".jsonl", ".csv", ".tsv", ".txt")


def read_texts(path: Path, text_column: str) -> list[str]:
    """The texts of a .jsonl / .csv / .tsv file (column `text_column`) or a .txt file (one per line)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise DataError(f"{path}: unknown file type {suffix or '(none)'} (expected {', '.join(FILE_TYPES)})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if suffix == ".txt":
        texts = [line.strip() for line in text.splitlines() if line.strip()]
    elif suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not a JSON object ({exc.msg})") from exc
        bad = next((i for i, row in enumerate(rows, start=1) if not isinstance(row, dict)), None)
        if bad is not None:
            raise DataError(f"{path}: record {bad} is not a JSON object with a {text_column!r} field")
        texts = _column(path, rows, sorted({key for row in rows for key in row}), text_column)
    else:
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        rows = list(reader)
        texts = _column(path, rows, list(reader.fieldnames or []), text_column)
    if not texts:
        raise DataError(f"{path}: no texts in it (empty file)")
    return texts


def _column(path: Path, rows: list[dict], columns: list[str], text_column: str) -> list[str]:
    if rows and text_column not in columns:
        raise DataError(f"{path}: no column {text_column!r} (columns found: {', '.join(columns) or 'none'}); "
                        "choose one with --text-column")
    missing = next((i for i, row in enumerate(rows, start=1) if not isinstance(row.get(text_column), str)), None)
    if missing is not None:
        raise DataError(f"{path}: record {missing} has no text in column {text_column!r}")
    return [row[text_column] for row in rows]


def predict(args: argparse.Namespace) -> None:
    from lmforge.artifacts import write_text
    from lmforge.modeling.io import open_model

    if bool(args.texts) == bool(args.file):
        raise DataError("give texts to classify or --file, not both" if args.texts else
                        "nothing to classify: give one or more texts, or --file reviews.jsonl|csv|txt")
    texts = read_texts(Path(args.file), args.text_column) if args.file else args.texts
    model = open_model(args.model)
    if args.file:
        from tqdm.auto import tqdm

        with tqdm(total=len(texts), unit="text", desc="predict", disable=None, file=sys.stderr) as bar:
            results = model.classify(texts, args.batch_size, progress=bar.update)
    else:
        results = model.classify(texts, args.batch_size)
    if args.output:
        write_text(args.output, "".join(json.dumps({"text": t, **r}, ensure_ascii=False) + "\n"
                                        for t, r in zip(texts, results, strict=True)))
        print(f"wrote {len(results)} predictions to {args.output}", file=sys.stderr)
    else:
        for text, r in zip(texts, results, strict=True):
            print(f"{r['label']}\t{r['probability']:.3f}\t{text}")
    cut = sum(r["truncated"] for r in results)
    if cut:
        print(f"note: {cut} of {len(results)} texts were longer than the model reads "
              f"(max_prompt_tokens={model.task['max_prompt_tokens']}): each was classified on its end"
              + (" (`truncated` in the JSON lines)" if args.output else ""), file=sys.stderr)


def generate(args: argparse.Namespace) -> None:
    from lmforge.modeling.io import open_model

    model = open_model(args.model)
    print(args.prompt + model.generate(args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed))


def describe_ranks(manifest: dict[str, Any]) -> str:
    """The factored layers of a low-rank folder (its lowrank.json) in one line."""
    layers = manifest["layers"]
    if not layers:
        return "none"
    ranks = sorted(layer["rank"] for layer in layers)
    full = sum(min(layer["in_features"], layer["out_features"]) for layer in layers)
    return (f"{len(layers)}, rank {ranks[0]}..{ranks[-1]} (median {ranks[len(ranks) // 2]}; "
            f"{sum(ranks) / full:.0%} of full rank)")


def info(args: argparse.Namespace) -> None:
    from lmforge.artifacts import read_json
    from lmforge.evaluation.metrics import count_parameters
    from lmforge.modeling.card import read_card
    from lmforge.modeling.io import open_model, weight_files

    model = open_model(args.model)
    folder = model.folder
    card = read_card(folder).get("lmforge", {})
    rows: list[tuple[str, Any]] = [("folder", folder), ("format", model.format.name),
                                   ("architecture", model.config.get("model_type", "?"))]
    if (folder / "quantization.json").is_file():  # which quantization, and so which runtime runs it
        rows.append(("method", read_json(folder / "quantization.json").get("method", "?")))
    if (folder / "lowrank.json").is_file():  # factored layers: how far each weight matrix was cut
        rows.append(("low-rank layers", describe_ranks(read_json(folder / "lowrank.json"))))
    if card:
        rows += [("stage", card.get("stage"))]
    if hasattr(model.model, "named_modules"):
        counts = count_parameters(model.model)
        rows += [("parameters", f"{counts['parameters']:,}"),
                 ("non-zero parameters", f"{counts['nonzero_parameters']:,}"),
                 ("sparsity", f"{1 - counts['nonzero_parameters'] / counts['parameters']:.1%}")]
    rows.append(("weights on disk", f"{sum(p.stat().st_size for p in weight_files(folder, model.format)):,} bytes"))
    if model.task:
        from lmforge.modeling.family import kind_of

        head = "classifier head" if kind_of(model.config) == "classifier" else "label word"
        rows.append(("task", f"review + {model.task['prompt']!r} -> {head}: "
                             + " / ".join(repr(w) for w in model.task["label_words"])))
    # Test metrics from evaluate, when the folder is models/<name> of a repository that ran it.
    evaluate_json = folder.resolve().parent.parent / "metrics" / "evaluate.json"
    if folder.resolve().parent.name == "models" and evaluate_json.is_file():
        measured = read_json(evaluate_json).get("models", {}).get(folder.resolve().name)
        if measured:
            shown = {"accuracy": "{:.3f}", "validation_accuracy": "{:.3f}", "ppl_general": "{:.2f}",
                     "ppl_domain": "{:.2f}", "latency_p50_ms": "{:.2f} ms", "speedup_p50": "{:.2f}x",
                     "tokens_per_s": "{:,.0f}"}
            rows += [(f"evaluate: {k}", fmt.format(measured[k])) for k, fmt in shown.items()
                     if measured.get(k) is not None]
    elif card.get("metrics"):
        rows += [(f"stage validation: {k}", v) for k, v in card["metrics"].items() if "perplexity" in k]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="lmforge", description="Use a model folder of the lmforge chain "
                                   "(any format: Hugging Face safetensors, lmforge int8, ...).")
    commands = main.add_subparsers(dest="command", required=True)

    p = commands.add_parser("predict", help="sentiment label and probability of each text")
    p.add_argument("model", help="a model folder, e.g. models/quantized")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--file", help="a .jsonl, .csv, .tsv or .txt (one text per line) file of texts")
    p.add_argument("--text-column", default="text", help="the column (csv/tsv) or field (jsonl) with the text")
    p.add_argument("--output", help="write JSON lines (text, label, probability) here instead of printing")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(run=predict)

    g = commands.add_parser("generate", help="continue a prompt")
    g.add_argument("model")
    g.add_argument("prompt")
    g.add_argument("--max-new-tokens", type=int, default=40)
    g.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    g.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens (0: all)")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(run=generate)

    i = commands.add_parser("info", help="format, parameters, sparsity, size and metrics of a model folder")
    i.add_argument("model")
    i.set_defaults(run=info)
    return main


def require_utf8(args: argparse.Namespace) -> None:
    """Texts and prompts given on the command line must be text: bytes that are not UTF-8 reach Python as
    lone surrogates (PEP 383), which no tokenizer accepts."""
    given = [("text", t) for t in getattr(args, "texts", None) or []]
    given += [("prompt", args.prompt)] if isinstance(getattr(args, "prompt", None), str) else []
    for what, text in given:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            byte = ord(text[exc.start]) - 0xDC00  # the undecodable byte, as surrogateescape keeps it
            shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")  # caf\xff
            raise DataError(f"the {what} argument '{shown}' is not "
                            f"UTF-8 text (byte 0x{byte:02x} at character {exc.start}); pass UTF-8 (a UTF-8 "
                            "terminal, or the texts in a UTF-8 file with --file)") from None


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    for name in ("batch_size", "max_new_tokens"):
        if getattr(args, name, 1) < 1:
            parser().error(f"--{name.replace('_', '-')} must be at least 1")
    if getattr(args, "temperature", 0) < 0:
        parser().error("--temperature must be >= 0")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # A user of the command needs neither torch's notice that its int8 tensor API is deprecated nor
    # transformers' notes and progress bar for loading a few MB of weights.
    warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        require_utf8(args)
        args.run(args)
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
