"""``edge-runtime optimize``: quantize a float model, verify it side by side, refuse or write it.

:func:`optimize` reads the float model and the calibration data, splits the data into a
calibration part and a held-out part (never overlapping), optionally prunes, quantizes with the
engines in order (each in a child process, every failure kept), verifies agreement, size,
integer-ness, latency and delegate coverage, and writes the model and its manifest only when it
is at least as good as promised (or ``force``). It returns the :class:`~.report.Report` either way.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from edge_runtime.errors import EdgeRuntimeError, ModelFormatError
from edge_runtime.optimize import OptimizeError, engines, rewrite, verify
from edge_runtime.optimize import data as calib
from edge_runtime.optimize.options import Options
from edge_runtime.optimize.report import ModelFacts, PruneResult, Report, model_facts, write_outputs
from edge_runtime.runtime.backend import BACKEND_NAMES, get_backend
from edge_runtime.runtime.coverage import Coverage, coverage
from edge_runtime.runtime.model import Model
from edge_runtime.runtime.modelfile import ModelInfo, parse_model, read_model_file
from edge_runtime.runtime.onnxfile import is_onnx_path

log = logging.getLogger(__name__)

IO_TYPES = ("int8", "uint8", "float32")
TASKS = ("auto", "classification", "detection", "raw")
COVERAGE_DELEGATES = ("cpu", "gpu", "edgetpu")


def _check_options(o: Options) -> None:
    if is_onnx_path(o.model):
        raise OptimizeError(
            f"{o.model}: optimize quantizes .tflite models; quantize an .onnx model with "
            "onnxruntime.quantization.quantize_static (docs/onnx.md, tools/build_onnx_models.py)"
        )
    if o.io not in IO_TYPES:
        raise OptimizeError(f"--io must be one of {', '.join(IO_TYPES)}, got {o.io!r}")
    if o.task not in TASKS:
        raise OptimizeError(f"--task must be one of {', '.join(TASKS)}, got {o.task!r}")
    if not 0.0 <= o.min_agreement <= 1.0:
        raise OptimizeError(f"--min-agreement must be 0..1, got {o.min_agreement}")
    if not 0.0 < o.calibration_share < 1.0:
        raise OptimizeError(f"--calibration-share must be between 0 and 1, got {o.calibration_share}")
    if not 1 <= o.runs <= 100_000 or not 1 <= o.threads <= 64 or not 1 <= o.timeout_s <= 86_400:
        raise OptimizeError("--runs must be 1..100000, --threads 1..64 and --timeout 1..86400 s")
    if o.out.resolve() == o.model.resolve():
        raise OptimizeError(f"{o.out}: --out must not overwrite the float model")
    if o.out.exists() and o.out.is_dir():
        raise OptimizeError(f"{o.out}: --out is a folder; name the .tflite file to write")
    engines.engine_order(o.engine)
    unknown = [b for b in o.backends if b not in BACKEND_NAMES]
    if unknown or not o.backends or not o.delegates:
        raise OptimizeError(
            f"--backends takes {', '.join(BACKEND_NAMES)} and --delegates at least one, got {unknown}"
        )


def _check_float_model(path: Path, info: ModelInfo) -> None:
    if info.custom_ops:
        raise OptimizeError(
            f"{path}: has custom ops ({', '.join(info.custom_ops)}) that the calibrators cannot run "
            "(they run the graph on LiteRT's builtin kernels); quantize a model before compiling it "
            "for an accelerator"
        )
    if not info.float_tensors:
        raise OptimizeError(f"{path}: has no float tensors: it is already quantized")


def _preps(
    options: Options, model: Model, names: Sequence[str]
) -> tuple[dict[int, calib.ImagePrep], tuple[str, ...]]:
    """Image preprocessing of each input from ``--config``/``--pipeline`` (first model's bindings),
    and that model's delegate chain (its keys)."""
    if options.config is None:
        if options.pipeline is not None:
            raise OptimizeError("--pipeline needs --config")
        return {}, ()
    from edge_runtime.config import ImageInput, load_config

    config = load_config(options.config)
    pipelines = {p.name: p for p in config.pipelines}
    name = options.pipeline or config.pipelines[0].name
    if name not in pipelines:
        raise OptimizeError(f"{options.config}: no pipeline {name!r}; pipelines are {sorted(pipelines)}")
    preps: dict[int, calib.ImagePrep] = {}
    first = pipelines[name].models[0]
    chain = tuple(str(d.type) for d in (first.delegates or config.defaults.delegates))
    for binding in first.inputs:
        if not isinstance(binding, ImageInput):
            continue
        position = binding.input if isinstance(binding.input, int) else None
        if position is None:
            matches = [i for i, n in enumerate(names) if binding.input in (n, model.inputs[i].name)]
            position = matches[0] if matches else None
        if position is None or not 0 <= position < len(model.inputs):
            raise OptimizeError(
                f"pipeline {name!r}: image binding input {binding.input!r} is not an input of {options.model}"
            )
        mean = tuple(binding.mean) if isinstance(binding.mean, list) else binding.mean
        std = tuple(binding.std) if isinstance(binding.std, list) else binding.std
        preps[position] = calib.ImagePrep(binding.resize, binding.color, binding.pad_value, mean, std)
    return preps, chain


def _names(data: bytes, model: Model) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Input and output names: the signature's where the model has one, else the tensor names."""
    sigs = rewrite.signatures(data)
    ins = {i: n for n, i in sigs[0].inputs} if sigs else {}
    outs = {i: n for n, i in sigs[0].outputs} if sigs else {}
    return (
        tuple(ins.get(s.index, s.name) for s in model.inputs),
        tuple(outs.get(s.index, s.name) for s in model.outputs),
    )


def _read_labels(path: Path | None) -> tuple[str, ...]:
    if path is None:
        return ()
    try:
        return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise OptimizeError(f"{path}: cannot read labels: {exc}") from exc


def _load(path: Path, threads: int, delegate: str = "cpu", backend: str = "litert") -> Model:
    return Model(path, delegates=[delegate], threads=threads, backend=backend)


def _heads(
    options: Options,
    float_model: Model,
    out_names: Sequence[str],
    f: verify.Outputs,
    q: verify.Outputs,
    samples: Sequence[calib.Sample],
) -> list[verify.HeadResult]:
    heads: list[verify.HeadResult] = []
    for position, spec in enumerate(float_model.outputs):
        task = verify.head_task(spec, options.task)
        fa = [s[position] for s in f]
        qa = [s[position] for s in q]
        name = out_names[position]
        if task == "classification":
            labels = [s.labels.get(position) for s in samples]
            heads.append(verify.classification(name, fa, qa, labels))
        elif task == "detection":
            image = float_model.inputs[0].shape
            heads.append(verify.detection(name, fa, qa, (image[1], image[2])))
        else:
            heads.append(verify.raw(name, fa, qa))
    return heads


def _quantize(
    options: Options, source: bytes, calibration: Sequence[calib.Sample], folder: Path
) -> tuple[list[engines.Attempt], bytes | None, str]:
    prepared, _ = rewrite.with_default_signature(source)
    attempts: list[engines.Attempt] = []
    arrays = [s.inputs for s in calibration]
    for name in engines.engine_order(options.engine):
        attempt = engines.run_engine(name, prepared, arrays, io=options.io, timeout_s=options.timeout_s)
        if attempt.model is not None:
            problem = _check_result(
                attempt.model, options.io, folder / f"{name}.tflite", options.threads, _fp16_hint(source)
            )
            if problem:
                attempt = engines.Attempt(name, attempt.seconds, error=problem)
            else:
                attempts.append(attempt)
                return attempts, attempt.model, name
        log.info("engine %s failed: %s", name, attempt.error)
        attempts.append(attempt)
    return attempts, None, ""


def _load_error(text: str) -> str:
    """LiteRT's load error without the path and the run of XNNPACK "failed to delegate" lines."""
    cause = text.split(" failed: ", 1)[-1]
    skipped = Counter(re.findall(r"failed to delegate (\w+) node #\d+", cause))
    cause = re.sub(r"failed to delegate \w+ node #\d+", "", cause).strip()
    cause = re.sub(r"(?<=[a-z)])(Node number)", r"; \1", cause)
    if skipped:
        ops = ", ".join(f"{n} {op}" for op, n in skipped.items())
        cause += f" (XNNPACK also refused {ops})"
    return cause if len(cause) <= 300 else cause[:297] + "..."


def _fp16_hint(source: bytes) -> str:
    info = parse_model(source, "float model")
    fp16 = [t for t in info.tensors if t.dtype == "float16" and t.is_constant]
    if not fp16:
        return ""
    return (
        f"; the float model stores {len(fp16)} weights as float16 (behind DEQUANTIZE ops), which stay float"
    )


def _check_result(content: bytes, io: str, path: Path, threads: int, fp16_hint: str = "") -> str:
    try:
        info = parse_model(content, "result")
    except ModelFormatError as exc:
        return f"produced an invalid model: {exc}"
    if io != "float32" and not info.fully_integer:
        floats = info.float_tensors
        return (
            f"produced a model that is not fully integer: {len(floats)} float tensors "
            f"(e.g. {', '.join(floats[:3])}){fp16_hint}"
        )
    path.write_bytes(content)
    try:
        _load(path, threads)
    except EdgeRuntimeError as exc:
        return f"produced a model LiteRT cannot load: {_load_error(str(exc))}"
    return ""


def _latencies(options: Options, float_path: Path, int8_path: Path) -> tuple[list[verify.Latency], list[str]]:
    found: list[verify.Latency] = []
    unavailable: list[str] = []
    for backend in options.backends:
        try:
            get_backend(backend)
        except EdgeRuntimeError as exc:
            unavailable.append(f"{backend}: {exc}")
            continue
        for delegate in options.delegates:
            try:
                pair = [
                    _load(float_path, options.threads, delegate, backend),
                    _load(int8_path, options.threads, delegate, backend),
                ]
            except EdgeRuntimeError as exc:
                unavailable.append(f"{backend}/{delegate}: {str(exc).split(' failed: ')[-1]}")
                continue
            found.extend(verify.latency(pair, options.runs))
    return found, unavailable


def optimize(options: Options) -> Report:
    """Run the whole optimisation; the report says what was written, or why not."""
    _check_options(options)
    info, source = read_model_file(options.model)
    _check_float_model(options.model, info)
    try:
        float_model = _load(options.model, options.threads)
    except EdgeRuntimeError as exc:
        raise OptimizeError(f"{options.model}: cannot run the float model here: {exc}") from exc
    in_names, out_names = _names(source, float_model)
    preps, chain = _preps(options, float_model, in_names)
    labels = _read_labels(options.labels)
    model_inputs = calib.ModelInputs(float_model.inputs, in_names, out_names, preps, labels)
    dataset = calib.load(options.calibration, model_inputs, options.max_samples)
    calibration, held = calib.split(dataset.samples, options.calibration_share)
    float_out = verify.outputs(float_model, held)
    report = Report(
        options=options,
        dataset=dataset,
        calibration_samples=len(calibration),
        verification_samples=len(held),
        float_facts=model_facts(options.model, info),
    )
    with tempfile.TemporaryDirectory(prefix="edge-runtime-optimize-") as tmp:
        folder = Path(tmp)
        to_quantize = source
        if options.prune is not None:
            pruned, tensors = rewrite.prune(source, options.prune)
            pruned_path = folder / "pruned.tflite"
            pruned_path.write_bytes(pruned)
            pruned_out = verify.outputs(_load(pruned_path, options.threads), held)
            heads = _heads(options, float_model, out_names, float_out, pruned_out, held)
            report.pruning = PruneResult(options.prune, tuple(tensors), tuple(heads))
            to_quantize = pruned
        attempts, result, engine = _quantize(options, to_quantize, calibration, folder)
        report.attempts = tuple(attempts)
        if result is None:
            report.refusals.append("no engine could quantize the model")
            return report
        int8_path = folder / "int8.tflite"
        int8_path.write_bytes(result)
        int8_info = parse_model(result, str(options.out))
        int8_model = _load(int8_path, options.threads)
        report.engine = engine
        report.int8_facts = model_facts(options.out, int8_info)
        shapes = ([s.shape for s in float_model.outputs], [s.shape for s in int8_model.outputs])
        if shapes[0] != shapes[1] or len(int8_model.inputs) != len(float_model.inputs):
            report.refusals.append(
                f"the int8 model's outputs {shapes[1]} differ from the float ones {shapes[0]}"
            )
            return report
        report.heads = tuple(
            _heads(options, float_model, out_names, float_out, verify.outputs(int8_model, held), held)
        )
        latencies, unavailable = _latencies(options, options.model, int8_path)
        report.latency = tuple(latencies)
        report.delegates_unavailable = tuple(unavailable)
        report.coverage = _coverage(source, info, result, int8_info, chain)
        _decide(options, report)
        if not report.refusals or options.force:
            report.written = write_outputs(options, report, result, labels)
    return report


def _coverage(
    source: bytes, info: ModelInfo, result: bytes, int8_info: ModelInfo, chain: tuple[str, ...]
) -> Mapping[str, tuple[Coverage, Coverage]]:
    """Coverage of the delegates checkable here, plus those of the config's chain."""
    keys = COVERAGE_DELEGATES + tuple(k for k in dict.fromkeys(chain) if k not in COVERAGE_DELEGATES)
    found: dict[str, tuple[Coverage, Coverage]] = {}
    for f, q in zip(coverage(source, info, keys), coverage(result, int8_info, keys), strict=True):
        found[q.delegate] = (f, q)
    return found


def _decide(options: Options, report: Report) -> None:
    for head in report.heads:
        if head.agreement < options.min_agreement:
            report.refusals.append(
                f"{head.output}: agreement {head.agreement:.4f} is below "
                f"--min-agreement {options.min_agreement}"
            )
    if report.pruning is not None:
        for head in report.pruning.heads:
            if head.agreement < options.min_agreement:
                report.refusals.append(
                    f"pruning {report.pruning.fraction:g} costs too much on {head.output}: agreement "
                    f"{head.agreement:.4f} with the unpruned model is below {options.min_agreement}"
                )
    by_delegate: dict[str, list[verify.Latency]] = {}
    for row in report.latency:
        by_delegate.setdefault(row.delegate, []).append(row)
    for delegate, rows in by_delegate.items():
        if len(rows) == 2 and rows[1].p50_ms >= rows[0].p50_ms:
            ratio = rows[1].p50_ms / rows[0].p50_ms if rows[0].p50_ms > 0 else float("inf")
            report.refusals.append(
                f"the int8 model is slower than the float one on {delegate}: p50 {rows[1].p50_ms:.3f} ms vs "
                f"{rows[0].p50_ms:.3f} ms ({ratio:.1f}x)"
            )
    cpu = report.coverage.get("cpu")
    if cpu is not None and report.refusals and cpu[1].left:
        report.notes.append(
            f"int8 ops XNNPACK does not take (they run on reference kernels): {cpu[1].text()}"
        )


__all__ = ["ModelFacts", "Options", "optimize"]
