"""Model compression for the prune and quantize stages.

linear       finding linear-like layers (nn.Linear and GPT-2's Conv1D) and converting Conv1D to nn.Linear
calibration  activation statistics on train-split blocks (input norms per layer, block influence)
methods      the prune methods by name: configuration checks, composition, applying them in order
prune        magnitude (L1) pruning with masks kept during recovery, made permanent before saving; sparsity report
wanda        activation-aware unstructured pruning (|W| x ||X||), optionally N:M
structured   heads, FFN channels and blocks removed physically; a smaller HF model
lowrank      truncated-SVD factors (plain or activation-aware), saved as safetensors + JSON with its loader
quantize     dynamic INT8 on CPU, saved as safetensors + JSON manifest, with its own loader (no pickle)
"""
