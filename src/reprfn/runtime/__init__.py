"""The runtime: what a model is (``ModelInfo``), how it runs (engines), and running it on images.

    info.py      ModelInfo, describe(model)              what running a model needs to know
    engines.py   Engine (the protocol), TorchEngine, FusedCPUEngine
    kernels.py   the oneDNN kernel set the fused engine runs RepRFN's one forward with
    onnx.py      the ONNX export cache, the ONNX Runtime session factory, OnnxEngine
    openvino.py  OpenVinoEngine, from the same cache
    prepare.py   prepare(model, device, precision, backend) -> Runner: the engine policy
    memory.py    free memory, auto_tile, check_memory
    run.py       run / run_pixels: tiles, padding, the output held once

Import from the submodules; this package imports none of them, so that ``import reprfn`` stays
light (ONNX Runtime and OpenVINO are imported only when an engine is opened).
"""
