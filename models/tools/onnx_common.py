"""What the model tools share: wrapping a node list into a checked, shape-inferred ONNX model with
Ultralytics-style metadata, written deterministically."""
import onnx
from onnx import helper

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
