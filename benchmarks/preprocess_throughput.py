"""Tokenisation throughput of the preprocess stage against the tokenizer's own batch encode.

    PYTHONPATH=src python benchmarks/preprocess_throughput.py            # about a minute on 2 cores

The stage's path is `lmforge.data.preprocess.pack`: tokenize the documents ~1 MB of text per batch
call of the fast tokenizer, append eos, concatenate with numpy, cut into `block_size` blocks and
write them to an Arrow file that the returned `datasets.Dataset` memory-maps. The baseline is
`tokenizer(texts)["input_ids"]` on the same texts with the same tokenizer: the fast (Rust)
tokenizer's batch call and nothing else. Tokens/s counts the tokens the tokenizer produced (the
stage also counts its eos tokens, one per document; the ratio uses the tokenizer's tokens for both).
Each timing starts after `gc.collect()`: otherwise a full collection, triggered by the millions of
token objects either side allocates, lands on one side or the other and makes rounds bimodal (0.65
or 0.94 on the development machine). Rounds alternate which goes first; the ratio is the median over
rounds, with its spread. Corpora: the default profile's synthetic general corpus with a tokenizer
trained by the stage's `train_tokenizer`, and, when ../shared/data/wikitext-2 exists, WikiText-2
(valid split, by lines) with the original GPT-2 BPE from ../shared/data/gpt2-bpe.
Writes benchmarks/results/preprocess_throughput.json.
"""

from __future__ import annotations

import argparse
import gc
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import datasets

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from lmforge.compose import compose  # noqa: E402
from lmforge.config import stage_params  # noqa: E402
from lmforge.data import synthetic  # noqa: E402
from lmforge.data.cleaning import clean_text  # noqa: E402
from lmforge.data.preprocess import pack, train_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
GOAL = 0.8


def corpora(overrides: list[str], max_docs: int | None, with_wikitext: bool):
    """(name, texts, tokenizer, block_size) for each corpus measured."""
    with tempfile.TemporaryDirectory() as tmp:
        compose(Path(tmp) / "params.yaml", overrides, conf_dir=REPO / "conf")
        params = stage_params("data", "preprocess", path=Path(tmp) / "params.yaml")
    cfg = params.preprocess
    raw = synthetic.generate(params.data, params.seed)
    general = [clean_text(doc) for doc in raw.general][:max_docs]
    tokenizer = train_tokenizer(general, cfg.vocab_size)
    yield f"synthetic general (stage tokenizer, vocab {len(tokenizer)})", general, tokenizer, cfg.block_size
    wikitext, gpt2 = SHARED / "wikitext-2" / "wiki.valid.tokens", SHARED / "gpt2-bpe"
    if with_wikitext and wikitext.exists() and gpt2.exists():
        from transformers import AutoTokenizer

        lines = [line for line in wikitext.read_text(encoding="utf-8").splitlines() if line.strip()][:max_docs]
        yield "wikitext-2 valid lines (GPT-2 BPE, vocab 50257)", lines, AutoTokenizer.from_pretrained(gpt2), 1024


def time_stage(texts, tokenizer, block_size, folder: Path) -> tuple[float, int]:
    gc.collect()  # both sides start from the same collector state: a full collection costs ~0.1 s here
    start = time.perf_counter()
    _, stats = pack(texts, tokenizer, block_size, "bench", "train", folder / "blocks.arrow")
    return time.perf_counter() - start, stats["tokens"] - len(texts)  # without the eos appended per document


def reference_blocks(texts, tokenizer, block_size) -> list[list[int]]:
    """The blocks by definition, in memory: every document's tokens and eos, concatenated and cut."""
    flat = [t for ids in tokenizer(texts)["input_ids"] for t in [*ids, tokenizer.eos_token_id]]
    return [flat[i:i + block_size] for i in range(0, len(flat) - block_size + 1, block_size)]


def time_tokenizer(texts, tokenizer) -> tuple[float, int]:
    gc.collect()
    start = time.perf_counter()
    ids = tokenizer(texts)["input_ids"]
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(x) for x in ids)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--max-docs", type=int, default=None, help="use only the first documents of each corpus")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="Hydra override of conf/ (repeatable), e.g. data.general_docs=500")
    parser.add_argument("--no-wikitext", action="store_true", help="skip the WikiText-2 corpus")
    parser.add_argument("--output", type=Path, default=common.RESULTS / "preprocess_throughput.json")
    args = parser.parse_args(argv)
    datasets.disable_progress_bars()  # both sides without progress bars
    logging.getLogger("lmforge").setLevel(logging.WARNING)

    results = []
    folder = Path(tempfile.mkdtemp(prefix="lmforge-bench-"))
    for name, texts, tokenizer, block_size in corpora(args.override, args.max_docs, not args.no_wikitext):
        time_tokenizer(texts[:200], tokenizer)  # warm-up
        stage_blocks, _ = pack(texts, tokenizer, block_size, "bench", "check", folder / "check.arrow")
        assert stage_blocks["input_ids"][:] == reference_blocks(texts, tokenizer, block_size), "pack is wrong"
        del stage_blocks
        rounds = []
        for r in range(args.rounds):
            order = ("stage", "tokenizer") if r % 2 == 0 else ("tokenizer", "stage")
            row = {"order": "-".join(order)}
            for which in order:
                elapsed, tokens = (time_stage(texts, tokenizer, block_size, folder) if which == "stage"
                                   else time_tokenizer(texts, tokenizer))
                row[f"{which}_tokens_per_s"] = tokens / elapsed
                row["tokens"] = tokens
            row["ratio"] = row["stage_tokens_per_s"] / row["tokenizer_tokens_per_s"]
            rounds.append(row)
        ratio = common.summary([r["ratio"] for r in rounds])
        entry = {
            "corpus": name, "documents": len(texts), "characters": sum(map(len, texts)),
            "tokens": rounds[0]["tokens"], "block_size": block_size, "rounds": rounds,
            "stage_tokens_per_s": common.summary([r["stage_tokens_per_s"] for r in rounds]),
            "tokenizer_tokens_per_s": common.summary([r["tokenizer_tokens_per_s"] for r in rounds]),
            "ratio": ratio, "goal_ratio": GOAL, "goal_met": ratio["median"] >= GOAL,
        }
        results.append(entry)
        print(f"{name}: {len(texts)} documents, {entry['tokens']:,} tokens; stage "
              f"{entry['stage_tokens_per_s']['median']:,.0f} tokens/s, tokenizer batch encode "
              f"{entry['tokenizer_tokens_per_s']['median']:,.0f} tokens/s, ratio {ratio['median']:.3f} "
              f"(min {ratio['min']:.3f}, max {ratio['max']:.3f}; goal >= {GOAL})", flush=True)
    shutil.rmtree(folder)

    payload = {
        "benchmark": "preprocess_throughput",
        "config": {"overrides": args.override, "rounds": args.rounds, "max_docs": args.max_docs,
                   "stage_path": "lmforge.data.preprocess.pack (batched tokenize + eos, numpy concatenate, "
                                 "blocks written to a memory-mapped Arrow file)",
                   "baseline": "tokenizer(texts)['input_ids'] (fast tokenizer batch encode)",
                   "progress_bars": "disabled for both"},
        "environment": common.environment(),
        "results": results,
    }
    common.write_json(args.output, payload)
    print(f"wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
