"""int8 choices: 8- or 7-bit weights by the CPU's VNNI (recorded in the folder, applied by every loader's ORT
session), SmoothQuant-style smoothing (exact in fp32, closer to fp32 once int8), and the candidate loop."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from helpers import tiny_gpt2
from onnx import numpy_helper

from lmforge import hardware
from lmforge.compression import onnx_int8

VNNI = ["avx", "avx2", "avx512f", "avx512_vnni", "fma"]
NO_VNNI = ["avx", "avx2", "fma"]
X64 = "session.x64quantprecision"


def _option(session, key: str) -> str | None:
    try:
        return session.get_session_options().get_session_config_entry(key)
    except Exception:  # ORT raises for a key never set
        return None


def test_the_weight_bits_follow_vnni():
    assert hardware.has_vnni(VNNI) and hardware.has_vnni(["avx_vnni"]) and hardware.has_vnni(["amx_int8"])
    assert not hardware.has_vnni(NO_VNNI)
    assert hardware.int8_weights(VNNI)["reduce_range"] is False and hardware.int8_weights(VNNI)["weight_bits"] == 8
    rule = hardware.int8_weights(NO_VNNI)
    assert rule["reduce_range"] is True and "no VNNI" in rule["reason"]
    assert hardware.session_options(8, NO_VNNI) == {X64: "1"}
    assert hardware.session_options(8, VNNI) == hardware.session_options(7, NO_VNNI) == {}
    assert hardware.session_options(None, NO_VNNI) == {}


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rule")
    model = tiny_gpt2(vocab_size=256, n_positions=32, n_embd=32)
    model.config.save_pretrained(folder)
    return model, onnx_int8.export_onnx(model, folder / "fp32.onnx", max_len=32)


def _max_int8(path) -> int:
    graph = onnx.load(str(path))
    return max(int(np.abs(numpy_helper.to_array(i).astype(np.int32)).max()) for i in graph.graph.initializer
               if i.name.endswith("_quantized") and i.data_type == onnx.TensorProto.INT8)


@pytest.mark.parametrize("flags, bits", [(VNNI, 8), (NO_VNNI, 7)])
def test_the_file_and_every_session_follow_the_recorded_rule(fp32_file, tmp_path, monkeypatch, flags, bits):
    """Quantized on a (mocked) CPU: 8-bit weights with VNNI, 7-bit without, recorded in quantization.json; an
    8-bit file loaded on a CPU without VNNI gets ORT's U8U8 option, on one with VNNI none."""
    model, fp32 = fp32_file
    report = onnx_int8.quantize_onnx(fp32, tmp_path / onnx_int8.MODEL_FILE, per_channel=True, cpu_flags=flags)
    assert report["int8_weights"]["weight_bits"] == bits and report["int8_weights"]["vnni"] == (bits == 8)
    largest = _max_int8(tmp_path / onnx_int8.MODEL_FILE)
    assert largest > 64 if bits == 8 else largest <= 64
    model.config.save_pretrained(tmp_path)
    (tmp_path / onnx_int8.MANIFEST_FILE).write_text(json.dumps({"method": "onnx_int8",
                                                                "int8_weights": report["int8_weights"]}))
    assert onnx_int8.weight_bits(tmp_path) == bits
    for loading_flags in (VNNI, NO_VNNI):
        monkeypatch.setattr(hardware, "cpu_flags", lambda f=loading_flags: f)
        session = onnx_int8.OnnxModel(tmp_path, threads=1).session
        expected = "1" if bits == 8 and loading_flags is NO_VNNI else None
        assert _option(session, X64) == expected, (bits, loading_flags)


def test_a_folder_without_the_record_is_taken_for_7_bit_weights(tmp_path):
    assert onnx_int8.weight_bits(tmp_path) == 7
    (tmp_path / onnx_int8.MANIFEST_FILE).write_text(json.dumps({"method": "onnx_int8"}))
    assert onnx_int8.weight_bits(tmp_path) == 7
