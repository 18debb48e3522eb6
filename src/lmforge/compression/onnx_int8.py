"""ONNX Runtime INT8: export a model to ONNX, quantize it with ONNX Runtime, run it in an InferenceSession.

    export_onnx(model, "fp32.onnx")                      # torch.onnx.export(dynamo=True); logits out
    quantize_onnx("fp32.onnx", "model.onnx", per_channel=True)   # dynamic int8 (or static QDQ)
    OnnxModel("models/quantized")                        # what evaluate runs: model(input_ids=, attention_mask=)

Any kind of model of the chain (lmforge.modeling.family) exports the same way, with the inputs input_ids and
attention_mask and the output logits, of the model's own shape: (batch, seq, vocab) for a causal LM or a BERT
MLM, (batch, labels) for a `*ForSequenceClassification` classifier. BERT's token_type_ids are not an input
(all 0: one segment).

The dynamo exporter is used because the TorchScript one fails on GPT-2. ONNX Runtime's dynamic
quantization turns every MatMul / Gemm with a constant weight into MatMulInteger (weights int8, activations
quantized per call). A tied LM head reads the embedding through a runtime Transpose, which no quantizer
sees, so before quantizing the head gets the transposed embedding as its own constant, and afterwards
`share_embedding` makes the token lookup read that same int8 matrix (a Gather along its other axis):
one int8 copy serves both, and the file is about a quarter of fp32. BERT's MLM decoder is tied the same way
(its separate bias is an Add after the MatMul, untouched). A classifier has no LM head: nothing is untied or
shared, its head (`score`, `classifier`) and BERT's pooler are quantized as any other MatMul / Gemm.

Saved folder (models/quantized): model.onnx, config.json, quantization.json (method, coverage, ...),
tokenizer files. Only onnxruntime, numpy and the tokenizer are needed to run it (see `OnnxModel`).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from lmforge import hardware, quiet
from lmforge.modeling.io import QUANTIZED_MANIFEST

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
INPUTS, OUTPUT = ("input_ids", "attention_mask"), "logits"
OPSET = 18
# Weights of these op types are quantized; Gather is the embedding lookup (an untied one: a tied one is
# shared with the head by `share_embedding`).
QUANTIZED_OPS = ("MatMul", "Gemm", "Gather")
INT8_TYPES = (TensorProto.INT8, TensorProto.UINT8)
INT4_TYPES = (TensorProto.INT4, TensorProto.UINT4)  # blockwise embeddings (GatherBlockQuantized)
SCALE_SUFFIXES = ("_scale", "_scales", "_zero_point", "_zero_points")
# Blockwise (quantize.block_size): ORT's MatMulNBits takes 8-bit weights; GatherBlockQuantized only 4-bit.
WEIGHT_BITS, EMBEDDING_BITS = 8, 4
# MatMulNBits' accuracy_level 4: int8 compute, the activations quantized per block of block_size at run time
INT8_COMPUTE = 4
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's optimizer and ORT's quantizer log hundreds of INFO lines per model (ORT through the
    root logger): keep the stage's log readable while they run."""
    names = ("", "onnxscript", "onnx_ir", "torch.onnx")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with quiet.third_party():  # and the exporter's and quantizer's warnings meant for their own users
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _logits_module(model: Any) -> Any:
    import inspect

    import torch

    class Logits(torch.nn.Module):
        """input_ids, attention_mask -> logits, without the cache and the other outputs. The logits are
        whatever the model's are: (batch, seq, vocab) for an LM, (batch, labels) for a classifier. BERT's
        token_type_ids are left out (all 0, as in a one-segment input)."""

        def __init__(self, lm: torch.nn.Module) -> None:
            super().__init__()
            self.lm = lm
            # decoders take use_cache (a cache would be one more output); BERT's forward has no such argument
            self.extra = {"use_cache": False} if "use_cache" in inspect.signature(lm.forward).parameters else {}

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask, **self.extra)
            # BertForPreTraining names its MLM logits prediction_logits (its NSP logits are not exported)
            return out.logits if "logits" in out else out.prediction_logits

    return Logits(model)


def export_onnx(module: Any, path: str | Path, *, max_len: int, output_name: str = OUTPUT,
                wrap_lm: bool = True) -> Path:
    """Export `module` (a causal LM, or with wrap_lm=False any module of (input_ids, attention_mask)) to
    one ONNX file with a dynamic batch and sequence length (sequences up to `max_len`)."""
    import torch

    path = Path(path)
    module = (_logits_module(module) if wrap_lm else module).eval()
    example = torch.randint(0, 8, (2, min(8, max_len)))
    batch, seq = torch.export.Dim("batch", max=4096), torch.export.Dim("seq", max=max_len)
    with torch.no_grad(), _quiet():
        program = torch.onnx.export(module, (example, torch.ones_like(example)), dynamo=True,
                                    input_names=list(INPUTS), output_names=[output_name], opset_version=OPSET,
                                    dynamic_shapes={"input_ids": {0: batch, 1: seq},
                                                    "attention_mask": {0: batch, 1: seq}},
                                    optimize=True, verbose=False)
    program.save(str(path))
    return path


# --------------------------------------------------------------------------------------------------
# Graph surgery around the tied embedding
# --------------------------------------------------------------------------------------------------


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in model.graph.initializer}


def untie_head(model: onnx.ModelProto) -> str | None:
    """Give a MatMul that reads Transpose(initializer) a transposed constant of its own, so the
    quantizer sees it; returns the tied embedding's name (None if the head reads a constant already)."""
    inits = _initializers(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    tied = None
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] in inits:
            continue
        transpose = producers.get(node.input[1])
        if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[transpose.input[0]])
        if weight.ndim != 2:
            continue
        name = f"{transpose.input[0]}.T"
        if name not in inits:
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), name))
            inits = _initializers(model)
        node.input[1] = name
        tied = transpose.input[0]
    tied = _folded_head(model) or tied
    used = {name for node in model.graph.node for name in node.input} | {out.name for out in model.graph.output}
    dead = [node for node in model.graph.node if node.op_type == "Transpose" and not set(node.output) & used]
    for node in dead:  # the runtime transposes the head no longer reads
        model.graph.node.remove(node)
    return tied


def _folded_head(model: onnx.ModelProto) -> str | None:
    """A small tied head the exporter constant-folded: a MatMul constant equal to the transpose of an
    embedding that a Gather reads. Renamed `<embedding>.T`, as `untie_head` names it; returns the embedding."""
    inits = _initializers(model)
    gathered = [inits[n.input[0]] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits]
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[1].endswith(".T"):
            continue
        weight = inits[node.input[1]]
        for embedding in gathered:
            if (len(weight.dims) == 2 and list(embedding.dims) == list(weight.dims)[::-1]
                    and np.array_equal(numpy_helper.to_array(embedding).T, numpy_helper.to_array(weight))):
                old, new = weight.name, f"{embedding.name}.T"
                weight.name = new
                for other in model.graph.node:
                    other.input[:] = [new if name == old else name for name in other.input]
                return embedding.name
    return None


def share_embedding(model: onnx.ModelProto, embedding: str) -> bool:
    """Make Gather(embedding, ids) read the int8 transposed head weight `<embedding>.T_quantized`
    (per-column symmetric int8, as the head's MatMulInteger uses it) and drop the fp32 embedding.

    Gather(W_T, ids, axis=1) -> (D, *ids) int8 -> Cast -> * scale[ids] (per column; per tensor: * scale)
    -> Transpose to (*ids, D). Returns False (graph untouched) if the head weight was not quantized
    symmetrically (zero point 0).
    """
    inits = _initializers(model)
    q_name = f"{embedding}.T_quantized"
    scale_name, zp_name = f"{embedding}.T_scale", f"{embedding}.T_zero_point"
    if q_name not in inits or scale_name not in inits or zp_name not in inits:
        return False
    scale = numpy_helper.to_array(inits[scale_name])
    zero_point = numpy_helper.to_array(inits[zp_name])
    if scale.ndim > 1 or np.any(zero_point != 0) or inits[q_name].data_type != TensorProto.INT8:
        return False
    per_column = scale.ndim == 1
    users = [node for node in model.graph.node if embedding in node.input]
    if not users or any(node.op_type != "Gather" or node.input[0] != embedding for node in users):
        return False
    new_nodes = []
    for node in model.graph.node:
        if node not in users:
            new_nodes.append(node)
            continue
        ids, out = node.input[1], node.output[0]
        tag = f"{node.name or out}_shared"
        new_nodes += [
            helper.make_node("Gather", [q_name, ids], [f"{tag}_q"], axis=1, name=f"{tag}_gather"),
            helper.make_node("Cast", [f"{tag}_q"], [f"{tag}_f"], to=TensorProto.FLOAT, name=f"{tag}_cast"),
        ]
        if per_column:
            new_nodes.append(helper.make_node("Gather", [scale_name, ids], [f"{tag}_s"], axis=0, name=f"{tag}_scale"))
        new_nodes.append(helper.make_node("Mul", [f"{tag}_f", f"{tag}_s" if per_column else scale_name], [f"{tag}_dq"],
                                          name=f"{tag}_mul"))
        # (D, *ids) -> (*ids, D): rank of ids + 1 axes, the first moved last
        rank = _rank(model, ids)
        new_nodes.append(helper.make_node("Transpose", [f"{tag}_dq"], [out], name=f"{tag}_transpose",
                                          perm=list(range(1, rank + 1)) + [0]))
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    kept = [init for init in model.graph.initializer if init.name != embedding]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return True


def _rank(model: onnx.ModelProto, name: str) -> int:
    """Rank of tensor `name` from shape inference (the token ids: 2 for (batch, seq))."""
    inferred = onnx.shape_inference.infer_shapes(model)
    for value in [*inferred.graph.value_info, *inferred.graph.input]:
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim)
    raise ValueError(f"cannot infer the rank of '{name}' in the exported graph")


# --------------------------------------------------------------------------------------------------
# Quantization and coverage
# --------------------------------------------------------------------------------------------------


class _Blocks:
    """ONNX Runtime CalibrationDataReader over token blocks (static quantization)."""

    def __init__(self, blocks: Sequence[Sequence[int]]) -> None:
        self._items: Iterator[dict[str, np.ndarray]] = iter(
            {"input_ids": np.asarray([b], dtype=np.int64), "attention_mask": np.ones((1, len(b)), dtype=np.int64)}
            for b in blocks)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite Gemm(A, W, bias) with a constant W (GPT-2's Conv1D layers export so) as MatMul(A, W) + bias,
    the form MatMulNBits replaces; returns how many were rewritten."""
    inits = _initializers(model)
    nodes, rewritten = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = inits.get(node.input[1]) if node.op_type == "Gemm" and len(node.input) > 1 else None
        if (weight is None or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        if attrs.get("transB", 0):  # store W as (in, out), as MatMul reads it
            transposed = numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), f"{weight.name}_t")
            model.graph.initializer.append(transposed)
            weight = transposed
        product = f"{node.output[0]}_matmul" if len(node.input) > 2 and node.input[2] else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight.name], [product], name=f"{node.name}_matmul"))
        if product != node.output[0]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_add"))
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return rewritten


def quantize_blockwise(model: onnx.ModelProto, block_size: int) -> onnx.ModelProto:
    """Every MatMul weight to 8-bit blocks of `block_size` input channels (MatMulNBits, int8 compute on
    activations quantized per block at run time) and the embedding lookup to 4-bit blocks."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    gemm_to_matmul(model)
    # its note that a 4-bit Gather lifts the opset to 21 (expected: GatherBlockQuantized needs it) is no warning
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)

    for ops, bits in ((("MatMul",), WEIGHT_BITS), (("Gather",), EMBEDDING_BITS)):
        config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=INT8_COMPUTE,
                                              bits=bits, op_types_to_quantize=ops)
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                         accuracy_level=INT8_COMPUTE, op_types_to_quantize=ops, algo_config=config)
        quantizer.process()
        model = quantizer.model.model
    return model


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, *, per_channel: bool,
                  calibration_blocks: Sequence[Sequence[int]] = (), block_size: int | None = None,
                  nodes_to_exclude: Sequence[str] = (), cpu_flags: list[str] | None = None) -> dict[str, Any]:
    """Quantize an exported model to int8 and write it to `out_path`; returns its coverage report.

    Without calibration blocks: dynamic quantization (int8 weights, activations quantized per call,
    MatMulInteger), 8-bit or 7-bit weights by `hardware.int8_weights(cpu_flags)` (this CPU's flags by default;
    the decision is in the report's `int8_weights`). With them: static QDQ (activation ranges calibrated on
    those blocks, 7-bit weights). With `block_size`: blockwise (`quantize_blockwise`), the head untied from the
    embedding. `nodes_to_exclude`: node names left in fp32 (dynamic and static only).
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    model = onnx.load(str(fp32_path))
    for node in model.graph.node:  # the exporter's per-node stack traces: a third of a small model's file
        node.ClearField("metadata_props")
        node.doc_string = ""
    tied = untie_head(model)
    if block_size is not None:
        with _quiet():
            result = quantize_blockwise(model, block_size)
        onnx.save(result, str(out_path))
        return {**coverage(result), "shared_embedding": False, "static": False, "block_size": block_size,
                "int8_weights": {"weight_bits": None, "reduce_range": None, "vnni": hardware.has_vnni(cpu_flags),
                                 "reason": "blockwise: MatMulNBits (8-bit blocks), no u8s8 MatMulInteger"}}
    rule = hardware.int8_weights(cpu_flags)
    if calibration_blocks:  # static QDQ: s8 activations, 7-bit weights as before (not the u8s8 kernels' rule)
        rule = {**rule, "weight_bits": 7, "reduce_range": True, "reason": "static QDQ: 7-bit weights"}
    with tempfile.TemporaryDirectory(prefix="lmforge-onnx-") as tmp, _quiet():
        untied = Path(tmp) / "untied.onnx"
        onnx.save(model, str(untied))
        quantized = Path(tmp) / "int8.onnx"
        # A tied embedding's lookup is not quantized on its own: it reads the head's int8 copy (below).
        ops = list(QUANTIZED_OPS)
        exclude = [node.name for node in model.graph.node if node.op_type == "Gather" and node.input[0] == tied]
        # ORT's quantizer splits a Gemm into `<name>_MatMul` + Add before it quantizes: exclude that name too
        exclude += [n for name in nodes_to_exclude for n in (name, f"{name}_MatMul")]
        if calibration_blocks:
            quantize_static(str(untied), str(quantized), _Blocks(calibration_blocks),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=ops, per_channel=per_channel,
                            nodes_to_exclude=exclude, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            reduce_range=rule["reduce_range"],
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": True})
        else:
            quantize_dynamic(str(untied), str(quantized), op_types_to_quantize=ops, per_channel=per_channel,
                             nodes_to_exclude=exclude, weight_type=QuantType.QInt8, reduce_range=rule["reduce_range"],
                             extra_options={"WeightSymmetric": True})
        result = onnx.load(str(quantized))
    shared = bool(tied) and share_embedding(result, tied)
    if tied and not shared:
        log.warning("the tied embedding could not share the head's int8 weight: it stays fp32")
    onnx.save(result, str(out_path))
    return {**coverage(result), "shared_embedding": shared, "static": bool(calibration_blocks), "int8_weights": rule}


def matmul_errors(fp32_path: str | Path, blocks: Sequence[Sequence[int]], max_tokens: int = 4096
                  ) -> dict[str, float]:
    """Each constant-weight MatMul / Gemm's own dynamic int8 error on the calibration `blocks`, largest first:
    ||X W - dq(q(X)) dq(q(W))|| / ||X W||, X quantized to uint8 with one scale per tensor (as ORT's
    DynamicQuantizeLinear), W to int8 per output column, symmetric. The fp32_fallback candidate leaves the
    largest in fp32 (quantize_dynamic's nodes_to_exclude). A tied head reads a runtime Transpose: not ranked."""
    import onnxruntime as ort

    model = onnx.load(str(fp32_path))
    inits = _initializers(model)
    targets = {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and node.name and len(node.input) > 1 and node.input[1] in inits:
            weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if weight.ndim == 2:
                targets[node.name] = (node.input[0], weight.T if attrs.get("transB", 0) else weight)
    existing = {out.name for out in model.graph.output}
    for name in {x for x, _ in targets.values()} - existing:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the tensors named
    runner = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [out.name for out in runner.get_outputs()]
    inputs: dict[str, list[np.ndarray]] = {}
    tokens = 0
    for block in blocks:
        ids = np.asarray([block], dtype=np.int64)
        outputs = runner.run(names, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        values = dict(zip(names, outputs, strict=True))
        for x, _ in targets.values():
            inputs.setdefault(x, []).append(values[x].reshape(-1, values[x].shape[-1]))
        tokens += ids.size
        if tokens >= max_tokens:
            break
    errors = {}
    for name, (x_name, weight) in targets.items():
        x = np.concatenate(inputs[x_name])
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        scale = (hi - lo) / 255 or 1.0
        zero = np.round(-lo / scale)
        xq = (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale
        w_scale = np.abs(weight).max(axis=0, keepdims=True) / 127
        w_scale[w_scale == 0] = 1.0
        wq = np.round(weight / w_scale) * w_scale
        exact = x @ weight
        errors[name] = float(np.linalg.norm(exact - xq @ wq) / (np.linalg.norm(exact) or 1.0))
    return dict(sorted(errors.items(), key=lambda item: -item[1]))


def coverage(model: onnx.ModelProto) -> dict[str, Any]:
    """Share of the weight matrices' elements (initializers of rank >= 2) stored as int8 in the graph."""
    int8 = total = 0
    dtypes: Counter[str] = Counter()
    for init in model.graph.initializer:
        if (len(init.dims) < 2 or init.data_type not in INT8_TYPES + INT4_TYPES + FLOAT_TYPES
                or init.name.endswith(SCALE_SUFFIXES)):
            continue
        n = int(np.prod(init.dims))
        total += n
        dtypes[TensorProto.DataType.Name(init.data_type).lower()] += n
        if init.data_type in INT8_TYPES + INT4_TYPES:
            int8 += n
    return {"coverage": int8 / total if total else 0.0, "int8_params": int8, "linear_params": total,
            "dtype": "int8", "weight_elements_by_dtype": dict(dtypes)}


# --------------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------------


MANIFEST_FILE = QUANTIZED_MANIFEST  # quantization.json: lmforge.compression.quantize writes it beside model.onnx


def recorded_weight_bits(folder: str | Path) -> int | None:
    """The int8 weights' bits recorded in a folder's quantization.json (`int8_weights`); 7 for a folder
    written before the record existed (lmforge always used 7-bit weights then)."""
    import json

    manifest = Path(folder) / MANIFEST_FILE
    if not manifest.is_file():
        return 7
    record = json.loads(manifest.read_text()).get("int8_weights")
    return 7 if record is None else record.get("weight_bits")


FROM_FOLDER = "folder"  # session(): read the weight bits from the quantization.json beside the file


def session(path: str | Path, threads: int | None = None, weight_bits: int | str | None = FROM_FOLDER) -> Any:
    """An ORT CPU session of one file; `weight_bits` of its int8 weights (by default as recorded beside the file,
    `recorded_weight_bits(folder)`) decides the U8U8 option on a CPU without VNNI (`hardware.session_options`)."""
    import onnxruntime as ort

    if weight_bits == FROM_FOLDER:
        weight_bits = recorded_weight_bits(Path(path).parent)
    options = ort.SessionOptions()
    for key, value in hardware.session_options(weight_bits).items():
        options.add_session_config_entry(key, value)
        log.debug("%s: %s=%s (8-bit weights on a CPU without VNNI)", path, key, value)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ORT threads spin by default and would steal the cores from whatever runs next (torch).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """An exported model behind the interface lmforge's metrics use:
    `model(input_ids=..., attention_mask=...).logits` (a torch tensor when given torch tensors), of the
    shape the torch model's logits have: (batch, seq, vocab) for an LM, (batch, labels) for a classifier.

    `config` is the Hugging Face config read from the folder (as a plain namespace: no transformers needed).
    """

    def __init__(self, path: str | Path, threads: int | None = None, file: str = MODEL_FILE) -> None:
        import json

        self.path = Path(path)
        self.config = SimpleNamespace(**json.loads((self.path / "config.json").read_text()))
        self._threads = threads
        self._file = file
        self.session = session(self.path / file, threads)  # the weight bits recorded in the folder

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, input_ids: Any, attention_mask: Any = None) -> SimpleNamespace:
        as_torch = not isinstance(input_ids, np.ndarray)
        ids = np.asarray(input_ids.cpu() if as_torch else input_ids, dtype=np.int64)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(
            attention_mask.cpu() if as_torch else attention_mask, dtype=np.int64)
        (logits,) = self.session.run([self.session.get_outputs()[0].name],
                                     {"input_ids": ids, "attention_mask": mask})
        if as_torch:
            import torch

            logits = torch.from_numpy(logits)
        return SimpleNamespace(logits=logits)

    def weight_arrays(self) -> Iterator[tuple[str, np.ndarray, int, bool]]:
        """(name, stored values, zero point, is an embedding) of every weight initializer (float or int8,
        rank >= 1, not the quantizer's scales nor rotary `inv_freq` buffers), for parameter counts. The
        exporter folds a Linear's transposed weight into a constant named `val_<n>`: a weight all the same.
        An embedding is what a Gather reads (the tied head's shared int8 matrix included)."""
        model = onnx.load(str(self.path / self._file))
        inits = _initializers(model)
        gathered = {node.input[0] for node in model.graph.node if node.op_type in ("Gather", "GatherBlockQuantized")}
        for init in model.graph.initializer:
            name = init.name
            if (init.data_type not in INT8_TYPES + INT4_TYPES + FLOAT_TYPES or not init.dims
                    or name.endswith((*SCALE_SUFFIXES, "inv_freq"))):
                continue
            zero_point = 0
            if init.data_type in (TensorProto.UINT8, TensorProto.UINT4) and name.endswith(("_Q8", "_Q4")):
                zero_point = 1 << (int(name[-1]) - 1)  # symmetric blockwise: stored with an offset of 2^(bits-1)
            elif name.endswith("_quantized"):
                zp = inits.get(name.removesuffix("_quantized") + "_zero_point")
                if zp is not None and int(np.prod(zp.dims)) == 1:  # per tensor; per channel ones are 0
                    zero_point = int(numpy_helper.to_array(zp).ravel()[0])
            yield name, numpy_helper.to_array(init), zero_point, name in gathered


# --------------------------------------------------------------------------------------------------
# The task-only model (lmforge.compression.task_head.TaskModel) in ONNX
# --------------------------------------------------------------------------------------------------

TASK_FILE = "task.onnx"


def export_task(task_model: Any, out_dir: str | Path, *, per_channel: bool, max_len: int,
                quantized: bool = True, block_size: int | None = None) -> Path:
    """Export a TaskModel to `out_dir`/task.onnx, int8 like the full model unless quantized=False."""
    out = Path(out_dir) / TASK_FILE
    fp32 = out.with_name(f"{TASK_FILE}.fp32.tmp")
    export_onnx(task_model, fp32 if quantized else out, max_len=max_len, output_name="label_logits", wrap_lm=False)
    if quantized:
        try:
            quantize_onnx(fp32, out, per_channel=per_channel, block_size=block_size)
        finally:
            fp32.unlink(missing_ok=True)
    return out


class OnnxTask:
    """task.onnx behind a call: (input_ids, attention_mask) -> label logits (batch, labels)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        path = Path(path)
        self.session = session(path / TASK_FILE if path.is_dir() else path, threads)

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        as_torch = not isinstance(input_ids, np.ndarray)
        feed = {"input_ids": np.asarray(input_ids.cpu() if as_torch else input_ids, dtype=np.int64),
                "attention_mask": np.asarray(attention_mask.cpu() if as_torch else attention_mask, dtype=np.int64)}
        (scores,) = self.session.run(None, feed)
        if as_torch:
            import torch

            return torch.from_numpy(scores)
        return scores
