"""Which ops of a model each delegate would take: the whole graph, or which ops stay behind.

- ``cpu`` (XNNPACK, measured): the model is loaded with LiteRT's default XNNPACK delegate and the
  graph after delegation is read back; every op not inside an XNNPACK partition runs on the
  interpreter's reference kernels, and each extra partition costs a hand-over. This is what made a
  naive int8 conversion of a third-party model 4-8x slower than its float original.
- ``gpu`` (static): LiteRT's model analyzer with its GPU compatibility check.
- ``edgetpu`` (static): the Edge TPU compiler maps ops up to the first one that is not on its
  documented list or not 8-bit quantized; the rest runs on the CPU.
Delegates not listed cannot be checked without their hardware and say so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from edge_runtime.runtime.modelfile import ModelInfo

# Ops the Edge TPU compiler maps (coral.ai "TensorFlow models on the Edge TPU", supported operations).
EDGETPU_OPS = frozenset(
    {
        "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE",
        "EXP", "EXPAND_DIMS", "FILL", "FULLY_CONNECTED", "GATHER", "HARD_SWISH", "L2_NORMALIZATION",
        "LOGISTIC", "LSTM", "MAX_POOL_2D", "MAXIMUM", "MEAN", "MINIMUM", "MUL", "PACK", "PAD",
        "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE",
        "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH",
        "SPLIT", "SQUARED_DIFFERENCE", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TANH", "TILE",
        "TRANSPOSE", "TRANSPOSE_CONV",
    }
)  # fmt: skip
EIGHT_BIT = frozenset({"int8", "uint8"})


@dataclass(frozen=True)
class Coverage:
    """One delegate's share of the graph."""

    delegate: str
    method: str
    whole_graph: bool | None
    ops: int
    delegated: int
    partitions: int | None = None
    left: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def text(self) -> str:
        if self.whole_graph is None:
            return self.note
        if self.whole_graph and not self.ops:
            return "compatible"
        n = self.partitions
        partitions = "" if n is None else f"{n} partition{'' if n == 1 else 's'}"
        if self.whole_graph:
            return f"whole graph ({self.ops} ops{' in ' + partitions if partitions else ''})"
        left = ", ".join(f"{name} x{count}" for name, count in self.left.items())
        parts = f", {partitions}" if partitions else ""
        where = "left to reference kernels" if self.delegate == "cpu" else "left on the CPU"
        return f"{self.delegated}/{self.ops} ops{parts}; {where}: {left}"


def xnnpack(content: bytes) -> Coverage:
    """Measured: load with LiteRT (XNNPACK on by default) and read which nodes it replaced."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=1)
    interpreter.allocate_tensors()
    nodes = interpreter._get_ops_details()  # the graph after delegation, delegate nodes included
    delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]
    ops = [n for n in nodes if n["op_name"] != "DELEGATE"]
    made_by_delegate = {int(t) for n in delegates for t in n["outputs"]}
    fed_to_delegate = {int(t) for n in delegates for t in n["inputs"]}
    graph_outputs = {int(d["index"]) for d in interpreter.get_output_details()}
    consumers: dict[int, list[int]] = {}
    for i, n in enumerate(ops):
        for t in n["inputs"]:
            consumers.setdefault(int(t), []).append(i)
    delegated = [False] * len(ops)
    for i in reversed(range(len(ops))):  # nodes are in topological order: consumers come later
        outs = [int(t) for t in ops[i]["outputs"]]
        if any(t in made_by_delegate for t in outs):
            delegated[i] = True
        elif any(t in fed_to_delegate or t in graph_outputs for t in outs):
            delegated[i] = False
        else:
            later = [c for t in outs for c in consumers.get(t, [])]
            delegated[i] = bool(later) and all(delegated[c] for c in later) and bool(delegates)
    left = Counter(str(n["op_name"]) for n, d in zip(ops, delegated, strict=True) if not d)
    return Coverage(
        "cpu",
        "measured: LiteRT XNNPACK",
        not left,
        len(ops),
        sum(delegated),
        len(delegates),
        dict(left.most_common()),
    )


def gpu(content: bytes) -> Coverage:
    """Static: LiteRT's analyzer with the GPU delegate compatibility check."""
    import tempfile

    from ai_edge_litert import _pywrap_analyzer_wrapper as analyzer

    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(content)
        f.flush()
        text = analyzer.ModelAnalyzer(f.name, True, True)
    problems = [line.strip() for line in text.splitlines() if "GPU COMPATIBILITY WARNING" in line]
    ops_left: Counter[str] = Counter()
    for line in text.splitlines():
        if "Not supported op" in line or "is not supported by" in line:
            ops_left[line.split(":")[0].strip()[:40]] += 1
    compatible = "looks compatible with GPU delegate" in text
    note = "" if compatible else (problems[0] if problems else "not compatible")
    return Coverage("gpu", "static: LiteRT analyzer", compatible, 0, 0, None, dict(ops_left), note)


def edgetpu(info: ModelInfo) -> Coverage:
    """Static: ops on the Edge TPU's list with 8-bit tensors, up to the first that is not."""
    left: Counter[str] = Counter()
    mapped = 0
    stopped = False
    for op in info.operators:
        tensors = [info.tensors[i] for i in (*op.inputs, *op.outputs) if 0 <= i < len(info.tensors)]
        activations = [t for t in tensors if not t.is_constant]
        ok = op.name in EDGETPU_OPS and all(t.dtype in EIGHT_BIT | {"int32"} for t in activations)
        if op.name in ("QUANTIZE", "DEQUANTIZE"):
            ok = ok and all(t.dtype in EIGHT_BIT for t in activations)
        if ok and not stopped:
            mapped += 1
        else:
            stopped = True
            left[op.name] += 1
    return Coverage(
        "edgetpu",
        "static: Edge TPU op list, 8-bit tensors",
        not left,
        len(info.operators),
        mapped,
        None,
        dict(left.most_common()),
    )


def coverage(content: bytes, info: ModelInfo, delegates: tuple[str, ...]) -> list[Coverage]:
    """Coverage of each delegate in ``delegates`` (those that cannot be checked here say so)."""
    found: list[Coverage] = []
    for key in delegates:
        if key == "cpu":
            found.append(xnnpack(content))
        elif key == "gpu":
            found.append(gpu(content))
        elif key == "edgetpu":
            found.append(edgetpu(info))
        else:
            found.append(
                Coverage(
                    key, "none", None, len(info.operators), 0, note="cannot be checked without the device"
                )
            )
    return found
