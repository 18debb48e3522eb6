"""Model compression for the prune and quantize stages.

linear    finding linear-like layers (nn.Linear and GPT-2's Conv1D) and converting Conv1D to nn.Linear
prune     magnitude pruning with masks kept during recovery, made permanent before saving; sparsity report
quantize  dynamic INT8 on CPU, saved as safetensors + JSON manifest, with its own loader (no pickle)
"""
