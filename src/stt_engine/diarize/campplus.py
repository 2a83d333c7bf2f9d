"""CAM++ (3D-Speaker, Apache-2.0) as an ONNX graph built from its PyTorch checkpoint, without torch.

The checkpoint `campplus_cn_en_common.pt` (3D-Speaker's `speech_campplus_sv_zh_en_16k-common_advanced`, 192-dim
embeddings, trained on Chinese and English speakers) is a zip of pickles plus raw tensor storages. We read it with
a restricted unpickler that only accepts an ordered dict of tensors (never arbitrary classes, so a tampered file
cannot run code) and lay the network out again with the `onnx` helper API: the layer structure below mirrors
3D-Speaker's `speakerlab/models/campplus` (FCM head, TDNN, three CAM-dense-TDNN blocks of 12/24/16 layers with
context-aware masking, transit layers, statistics pooling, a dense layer with a non-affine batch norm).
The graph is built once (about a second) and onnxruntime runs it; the `onnx` package is needed only to build it.

Input `feats`: [batch, frames, 80] Kaldi log-mel fbank, mean-normalised per window (see `features.py`).
Outputs: `embedding` [batch, 192] pooled over the whole input, and `frames` [batch, 512, ceil(frames / 2)], the
frame-level activations before statistics pooling: the diarizer runs the network once over a stretch of speech and
pools many overlapping windows out of `frames` (`pool_embeddings`, with the dense layer's weights kept beside the
graph in `dense.npz`), which costs a third of embedding each window on its own.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_NAME = "campplus_cn_en_common.pt"
CHECKPOINT_SIZE = 28_044_640
CHECKPOINT_SHA256 = "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199"
ONNX_NAME = "campplus.onnx"
DENSE_NAME = "dense.npz"
EMBEDDING_DIM = 192
FRAME_CHANNELS = 512  # frame-level output before statistics pooling, one frame per 20 ms
SEGMENT_FRAMES = 100  # CAM++'s context-aware masking pools over segments of 100 frames (after the stride of 2)
_BN_EPS = 1e-5
_OPSET = 17

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
    "LongStorage": np.int64, "IntStorage": np.int32, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any) -> np.ndarray:
    if not size:
        return storage[offset:offset + 1].reshape(()).copy()
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[s * item for s in stride])
    return np.ascontiguousarray(view)


def load_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """The state dict of a PyTorch zip checkpoint as numpy arrays; refuses anything but tensors in a dict."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path}: not a PyTorch zip checkpoint")
        root = pickles[0][: -len("data.pkl")]

        class Restricted(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                if (module, name) == ("collections", "OrderedDict"):
                    return collections.OrderedDict
                if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                    return _rebuild_tensor
                if module == "torch" and name in _STORAGE_DTYPES:
                    return _StorageType(name)
                raise pickle.UnpicklingError(f"{path}: refusing {module}.{name} in a weights file")

            def persistent_load(self, pid: Any) -> np.ndarray:
                kind, storage_type, key, _location, _numel = pid
                if kind != "storage" or not isinstance(storage_type, _StorageType):
                    raise pickle.UnpicklingError(f"{path}: unexpected persistent id {kind!r}")
                return np.frombuffer(archive.read(f"{root}data/{key}"), dtype=_STORAGE_DTYPES[storage_type.name])

        with archive.open(pickles[0]) as handle:
            state = Restricted(handle).load()
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict")
    return {k: v for k, v in state.items() if isinstance(v, np.ndarray) and not k.endswith("num_batches_tracked")}


class _Graph:
    """A tiny builder over `onnx.helper`: each method adds one node and returns its output name."""

    def __init__(self, state: dict[str, np.ndarray]) -> None:
        self.state = state
        self.nodes: list[Any] = []
        self.inits: dict[str, np.ndarray] = {}
        self.count = 0

    def _name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value: np.ndarray, hint: str = "c") -> str:
        name = self._name(hint)
        self.inits[name] = np.asarray(value)
        return name

    def weight(self, key: str) -> str:
        if key not in self.inits:
            self.inits[key] = self.state[key].astype(np.float32)
        return key

    def op(self, kind: str, inputs: list[str], hint: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = self._name(hint or kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def conv(self, x: str, key: str, *, bias: bool = False, stride: int | tuple[int, int] = 1,
             pad: int = 0, dilation: int = 1) -> str:
        w = self.state[f"{key}.weight"]
        spatial = w.ndim - 2
        strides = list(stride) if isinstance(stride, tuple) else [stride] * spatial
        inputs = [x, self.weight(f"{key}.weight")] + ([self.weight(f"{key}.bias")] if bias else [])
        return self.op("Conv", inputs, kernel_shape=list(w.shape[2:]), strides=strides, pads=[pad] * (2 * spatial),
                       dilations=[dilation] * spatial)

    def bn(self, x: str, key: str) -> str:
        mean = self.state[f"{key}.running_mean"]
        scale = self.state.get(f"{key}.weight", np.ones_like(mean))
        shift = self.state.get(f"{key}.bias", np.zeros_like(mean))
        return self.op("BatchNormalization", [
            x, self.const(scale.astype(np.float32)), self.const(shift.astype(np.float32)),
            self.weight(f"{key}.running_mean"), self.weight(f"{key}.running_var"),
        ], epsilon=_BN_EPS)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])


def _res_block(g: _Graph, x: str, key: str, stride: int) -> str:
    out = g.relu(g.bn(g.conv(x, f"{key}.conv1", stride=(stride, 1), pad=1), f"{key}.bn1"))
    out = g.bn(g.conv(out, f"{key}.conv2", pad=1), f"{key}.bn2")
    if f"{key}.shortcut.0.weight" in g.state:
        short = g.bn(g.conv(x, f"{key}.shortcut.0", stride=(stride, 1)), f"{key}.shortcut.1")
    else:
        short = x
    return g.relu(g.op("Add", [out, short]))


def _segment_context(g: _Graph, h: str) -> str:
    """mean over all frames + mean over each frame's 100-frame segment (the CAM layer's context), per frame."""
    whole = g.op("ReduceMean", [h], axes=[2], keepdims=1)
    seg = g.op("AveragePool", [h], kernel_shape=[SEGMENT_FRAMES], strides=[SEGMENT_FRAMES], ceil_mode=1)
    seg = g.op("Unsqueeze", [seg, g.const(np.array([3], np.int64))])
    seg = g.op("Expand", [seg, g.const(np.array([1, 1, 1, SEGMENT_FRAMES], np.int64))])
    seg = g.op("Reshape", [seg, g.const(np.array([0, 0, -1], np.int64))])
    frames = g.op("Slice", [g.op("Shape", [h]), g.const(np.array([2], np.int64)), g.const(np.array([3], np.int64))])
    seg = g.op("Slice", [seg, g.const(np.array([0], np.int64)), frames, g.const(np.array([2], np.int64))])
    return g.op("Add", [whole, seg])


def _dense_layer(g: _Graph, x: str, key: str, dilation: int) -> str:
    h = g.relu(g.bn(x, f"{key}.nonlinear1.batchnorm"))
    h = g.relu(g.bn(g.conv(h, f"{key}.linear1"), f"{key}.nonlinear2.batchnorm"))
    local = g.conv(h, f"{key}.cam_layer.linear_local", pad=dilation, dilation=dilation)
    ctx = g.relu(g.conv(_segment_context(g, h), f"{key}.cam_layer.linear1", bias=True))
    mask = g.op("Sigmoid", [g.conv(ctx, f"{key}.cam_layer.linear2", bias=True)])
    return g.op("Concat", [x, g.op("Mul", [local, mask])], axis=1)


def build_onnx(state: dict[str, np.ndarray]) -> bytes:
    """Serialise CAM++ with the weights of `state` as an ONNX model (see the module docstring)."""
    from onnx import TensorProto, helper, numpy_helper

    g = _Graph(state)
    x = g.op("Transpose", ["feats"], perm=[0, 2, 1])
    x = g.op("Unsqueeze", [x, g.const(np.array([1], np.int64))])  # [B, 1, 80, T]
    x = g.relu(g.bn(g.conv(x, "head.conv1", pad=1), "head.bn1"))
    for layer in ("layer1", "layer2"):
        x = _res_block(g, x, f"head.{layer}.0", 2)
        x = _res_block(g, x, f"head.{layer}.1", 1)
    x = g.relu(g.bn(g.conv(x, "head.conv2", stride=(2, 1), pad=1), "head.bn2"))
    x = g.op("Reshape", [x, g.const(np.array([0, 320, -1], np.int64))])  # [B, 32 channels x 10 bands, T]
    x = g.relu(g.bn(g.conv(x, "xvector.tdnn.linear", stride=2, pad=2), "xvector.tdnn.nonlinear.batchnorm"))
    for block, (layers, dilation) in enumerate(zip((12, 24, 16), (1, 2, 2)), start=1):
        for i in range(1, layers + 1):
            x = _dense_layer(g, x, f"xvector.block{block}.tdnnd{i}", dilation)
        x = g.relu(g.bn(x, f"xvector.transit{block}.nonlinear.batchnorm"))
        x = g.conv(x, f"xvector.transit{block}.linear")
    x = g.relu(g.bn(x, "xvector.out_nonlinear.batchnorm"))
    g.nodes.append(helper.make_node("Identity", [x], ["frames"]))
    # statistics pooling: mean and unbiased standard deviation over frames
    mean = g.op("ReduceMean", [x], axes=[2], keepdims=1)
    diff = g.op("Sub", [x, mean])
    frames = g.op("Cast", [g.op("Slice", [g.op("Shape", [x]), g.const(np.array([2], np.int64)),
                                          g.const(np.array([3], np.int64))])], to=TensorProto.FLOAT)
    var = g.op("Div", [g.op("ReduceSum", [g.op("Mul", [diff, diff]), g.const(np.array([2], np.int64))], keepdims=1),
                       g.op("Sub", [frames, g.const(np.array([1.0], np.float32))])])
    stats = g.op("Concat", [mean, g.op("Sqrt", [var])], axis=1)  # [B, 1024, 1]
    x = g.bn(g.conv(stats, "xvector.dense.linear"), "xvector.dense.nonlinear.batchnorm")
    g.nodes.append(helper.make_node("Squeeze", [x, g.const(np.array([2], np.int64))], ["embedding"]))

    graph = helper.make_graph(
        g.nodes, "campplus",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["batch", "frames", 80])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", EMBEDDING_DIM]),
         helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["batch", FRAME_CHANNELS, "out_frames"])],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in g.inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="stt-engine")
    model.ir_version = 8
    return model.SerializeToString()


def dense_weights(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The dense layer after statistics pooling, for `pool_embeddings` (stored as `dense.npz`)."""
    return {
        "weight": state["xvector.dense.linear.weight"][:, :, 0].astype(np.float32),  # [192, 1024]
        "mean": state["xvector.dense.nonlinear.batchnorm.running_mean"].astype(np.float32),
        "var": state["xvector.dense.nonlinear.batchnorm.running_var"].astype(np.float32),
    }


def pool_embeddings(frames: np.ndarray, spans: list[tuple[int, int]], dense: dict[str, np.ndarray]) -> np.ndarray:
    """Embeddings [len(spans), 192] of the windows `spans` (start, end output frames) of `frames` [512, T]:
    mean and unbiased standard deviation over the window, the dense layer, its non-affine batch norm."""
    stats = np.empty((len(spans), 2 * FRAME_CHANNELS), dtype=np.float32)
    for i, (start, end) in enumerate(spans):
        window = frames[:, start:end]
        stats[i, :FRAME_CHANNELS] = window.mean(axis=1)
        stats[i, FRAME_CHANNELS:] = window.std(axis=1, ddof=1) if end - start > 1 else 0.0
    out = stats @ dense["weight"].T
    return (out - dense["mean"]) / np.sqrt(dense["var"] + _BN_EPS)
