"""Model compression for the prune and quantize stages.

Every kind of model of the chain (lmforge.modeling.family) goes through it: causal LMs (GPT-2, Llama
family), BERT encoders with their MLM head, and `*ForSequenceClassification` classifiers of either. Pruning
touches the blocks only (a classifier head or a pooler is never pruned); quantization may take the heads
too; every compressed folder loads back as the class it came from.

linear        finding linear-like layers (nn.Linear and GPT-2's Conv1D) and converting Conv1D to nn.Linear
model_class   the class a compressed model is rebuilt as (its config's `architectures`, family.auto_class)
calibration   activation statistics on train-split blocks (input norms per layer, block influence)
methods       the prune methods by name: configuration checks, composition, applying them in order
prune         magnitude (L1) pruning with masks kept during recovery, made permanent before saving; sparsity report
wanda         activation-aware unstructured pruning (|W| x ||X||), optionally N:M
structured    heads, FFN channels and blocks removed physically; a smaller HF model
lowrank       truncated-SVD factors (plain or activation-aware), saved as safetensors + JSON with its loader
quantize      the quantize methods behind one interface, `load_quantized` for any quantized folder, and the
              onnx_int8 candidates (per_channel, smooth, blockwise, fp32_fallback) built, measured and chosen
dynamic_int8  torch dynamic INT8, saved as safetensors + JSON manifest, with its own loader (no pickle)
onnx_int8     ONNX export, ONNX Runtime INT8 (dynamic or static QDQ), run by an InferenceSession
smooth        SmoothQuant-style smoothing (activation outliers folded from the norms into the linears' weights)
bf16          weights stored and run in bfloat16
task_head     the task-only model of a causal LM: last position -> the label rows of the LM head (torch; ONNX
              in onnx_int8); not for classifiers, whose logits are the label scores already
"""
