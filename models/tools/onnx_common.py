"""What the model tools share: wrapping a node list into a checked, shape-inferred ONNX model with
Ultralytics-style metadata, written deterministically."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8


def finish_model(nodes, inits, name, in_name, in_shape, out_name, dtype, producer, meta):
    """Build the model (opset 13, IR 8), infer shapes strictly, add `meta` (sorted keys), check it fully.
    Returns (model, output shape)."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(in_name, dtype, in_shape)],
        [helper.make_tensor_value_info(out_name, dtype, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer,
                              producer_version="1")
    model.ir_version = IR_VERSION
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    out_shape = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    for k in sorted(meta):
        entry = model.metadata_props.add()
        entry.key, entry.value = k, meta[k]
    onnx.checker.check_model(model, full_check=True)
    return model, out_shape


def coco_names_meta(names):
    """Ultralytics' `names` metadata: a Python dict literal {0: 'person', ...}."""
    return "{" + ", ".join(f"{i}: '{n}'" for i, n in enumerate(names)) + "}"


class GraphBuilder:
    """Nodes and initialisers with unique, deterministic names (`stem_<counter>`), in the given precision."""

    def __init__(self, dtype):
        self.nodes, self.inits = [], []
        self.np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
        self.counter = 0

    def name(self, stem):
        self.counter += 1
        return f"{stem}_{self.counter}"

    def const(self, stem, array, dtype=None):
        n = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=dtype or self.np_dtype), n))
        return n

    def op(self, op_type, inputs, stem=None, out=None, **attrs):
        out = out or self.name(stem or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out
