"""ONNX Runtime as the peer of `cargo xtask bench --peers`.

A long-lived child of the benchmark: it reads one request per line on stdin
and answers one line on stdout, so that the benchmark can interleave ONNX
Runtime's runs with qbake's, round by round. Fields are separated by tabs.

    quantize SRC DST WEIGHT_TYPE PER_CHANNEL  -> ok pre-processed | ok not pre-processed (WHY)
    load NAME MODEL INPUT.f32 D0,D1,.. OUTPUT THREADS  -> ok INPUT_NAME
                     (OUTPUT empty: the graph's first output)
    run NAME N CORE  -> ok SECONDS SECONDS ...  (time.perf_counter around run;
                        CORE: the core to run this thread on, `-` for all)
    output NAME      -> ok V V ...  (the flattened output, float32)
    quit

Any failure answers `err MESSAGE` and the process goes on. The first line it
prints is `ok onnxruntime VERSION numpy VERSION onnx VERSION`, or `err ...`
when a package is missing.
"""

import os
import sys
import time


# Replies go to the original stdout; anything else written there, by Python
# or by native code, goes to stderr instead, so it cannot break the protocol.
REPLIES = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr


ALLOWED = None


def reply(line):
    REPLIES.write(line.replace("\n", " ") + "\n")
    REPLIES.flush()


def main():
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
    except Exception as e:  # noqa: BLE001 - any import failure is reported
        reply(f"err cannot import the peer's packages: {e!r}")
        return
    reply(f"ok onnxruntime {ort.__version__} numpy {np.__version__} onnx {onnx.__version__}")
    sessions = {}
    global ALLOWED
    if hasattr(os, "sched_getaffinity"):
        ALLOWED = os.sched_getaffinity(0)
    for line in sys.stdin:
        fields = line.rstrip("\n").split("\t")
        cmd = fields[0]
        try:
            if cmd == "quit":
                break
            if cmd == "quantize":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                src, dst, weight_type, per_channel = fields[1:5]
                # ONNX Runtime's recommended first step: shape inference and
                # graph optimization (BatchNormalization folded into Conv).
                pre = dst + ".pre.onnx"
                try:
                    from onnxruntime.quantization import quant_pre_process

                    # ONNX's shape inference is enough for these fixed-shape
                    # CNNs; the symbolic one would need sympy as well.
                    quant_pre_process(src, pre, skip_symbolic_shape=True)
                    source, note = pre, "pre-processed"
                except Exception as e:  # noqa: BLE001 - quantized without it
                    source, note = src, f"not pre-processed ({type(e).__name__}: {e})"
                quantize_dynamic(
                    source,
                    dst,
                    weight_type=getattr(QuantType, weight_type),
                    per_channel=per_channel == "1",
                )
                # Which weights got a scale per output channel: the quantizer
                # may not honour per_channel for every op.
                from onnx import numpy_helper

                quantized = onnx.load(dst)
                inits = {t.name: t for t in quantized.graph.initializer}
                ops = {}
                for node in quantized.graph.node:
                    if node.op_type in ("ConvInteger", "MatMulInteger") and len(node.input) > 1:
                        scale = inits.get(node.input[1].replace("_quantized", "_scale"))
                        if scale is None:
                            kind = "scale not found"
                        elif numpy_helper.to_array(scale).size > 1:
                            kind = "per-channel"
                        else:
                            kind = "per-tensor"
                        key = f"{node.op_type} {kind}"
                        ops[key] = ops.get(key, 0) + 1
                summary = ", ".join(f"{n} {k}" for k, n in sorted(ops.items()))
                reply(f"ok {note}; weights: {summary}")
            elif cmd == "load":
                name, model, input_path, shape, output, threads = fields[1:7]
                options = ort.SessionOptions()
                options.intra_op_num_threads = int(threads)
                options.inter_op_num_threads = 1
                options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
                dims = [int(d) for d in shape.split(",")]
                x = np.fromfile(input_path, dtype="<f4").reshape(dims)
                input_name = session.get_inputs()[0].name
                output = output or session.get_outputs()[0].name
                sessions[name] = (session, {input_name: x}, [output])
                reply(f"ok {input_name}")
            elif cmd == "run":
                session, feed, outputs = sessions[fields[1]]
                # This thread (ONNX Runtime's caller, the only one at one
                # thread) on one core, or back on all it may use.
                core = fields[3] if len(fields) > 3 else "-"
                if hasattr(os, "sched_setaffinity"):
                    os.sched_setaffinity(0, ALLOWED if core == "-" else {int(core)})
                times = []
                for _ in range(int(fields[2])):
                    start = time.perf_counter()
                    session.run(outputs, feed)
                    times.append(time.perf_counter() - start)
                reply("ok " + " ".join(repr(t) for t in times))
            elif cmd == "output":
                session, feed, outputs = sessions[fields[1]]
                y = session.run(outputs, feed)[0].astype(np.float32).ravel()
                reply("ok " + " ".join(repr(float(v)) for v in y))
            else:
                reply(f"err unknown request {cmd!r}")
        except Exception as e:  # noqa: BLE001 - reported to the benchmark
            reply(f"err {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
