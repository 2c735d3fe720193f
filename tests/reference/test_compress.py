"""`kestrel compress` checked from the outside: the written model (ONNX checker, interface, metadata, graph
structure, parameter counts), its Tucker-2 factors against an independent HOSVD (tensorly), the rank search
against the ladder, the random-probe error against onnxruntime on fresh random inputs, the compressed model
through `kestrel detect`, `bench` and `run`, and the command's answers to bad input.

One compression of YOLOv3-tiny (module fixture `compressed`: 12 calibration and 12 held-out images, about
1 min on 2 cores) serves most tests:
HOSVD factors (deterministic, and what tensorly computes independently), the calibration probe, a per-layer
bound of 0.03 (a few 1×1 heads meet it), and fixed ranks for one 3×3 layer (conv_41) and one 1×1 layer
(conv_37) so that both kinds are surely decomposed. Those ranks are aggressive (weight errors about 0.48 and
0.37) and still keep the person, dog and horse of person.jpg (checked below).
"""
import hashlib
import json
import os
import subprocess

# One BLAS thread: the SVDs here are small (at most 512 × 4608), and on a 2-core machine where kestrel or
# anything else is busy, OpenBLAS's spinning threads make them 10-20 times slower. (Takes effect when this is
# the first module to import numpy, as in `pytest .`; an explicit setting wins.)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import tensorly as tl  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402
from tensorly.decomposition import partial_tucker  # noqa: E402

from conftest import ROOT, need, photo  # noqa: E402

MODEL = "models/yolov3-tiny-416.onnx"
FIXED = {"conv_41": (128, 256), "conv_37": (128, 128)}  # (R_in, R_out); a 1×1 layer takes R_in = R_out
BOUND = 0.03
HOOI_LAYER, HOOI_RANKS, HOOI_ITERS = "conv_28", (128, 256), 3
METADATA_KEY = "kestrel_compress"


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def kestrel(kestrel_bin, *args, timeout=600):
    return subprocess.run([str(kestrel_bin), "--log", "warn", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def inits_of(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def nodes_by_name(model):
    return {n.name: n for n in model.graph.node}


def conv_nodes(model):
    return {n.name: n for n in model.graph.node if n.op_type == "Conv"}


def tucker_params(c, k, taps, r_in, r_out):
    """Weights of the replacement (crates/compress/src/tucker.rs `tucker_params`)."""
    return c * r_in + r_in * k if taps == 1 else c * r_in + r_in * r_out * taps + r_out * k


def ladder(c, k, taps, multiple):
    """The candidate ranks of a K×C×kh×kw kernel, smallest first (crates/compress/src/search.rs `ladder`):
    both ranks grow at the same fraction of their mode, rounded up to `multiple` but never above the channels,
    R_in = R_out for 1×1, and only rungs that save parameters."""
    m = max(multiple, 1)

    def rnd(r, cap):
        return max(min(-(-r // m) * m, cap), 1)

    out = []
    if taps == 1:
        cap = min(c, k)
        cands = [(rnd(r, cap), rnd(r, cap)) for r in range(1, cap + 1)]
    else:
        steps = max(c, k)
        cands = [(rnd(-(-(s * c) // steps), c), rnd(-(-(s * k) // steps), k)) for s in range(1, steps + 1)]
    for p in cands:
        if not out or out[-1] != p:
            out.append(p)
    return [p for p in out if tucker_params(c, k, taps, *p) < c * k * taps]


def hosvd_reconstruction(w, r_in, r_out, iterations=0):
    """Tucker-2 of the two channel modes (0: K, output; 1: C, input) with tensorly: `init='svd'` takes the
    leading left singular vectors of each mode's unfolding (HOSVD); `n_iter_max` HOOI sweeps refine them
    (tol=0: exactly that many, never stopped early). Returns the reconstructed kernel."""
    (core, (u, v)), _ = partial_tucker(w, rank=[r_out, r_in], modes=[0, 1], n_iter_max=iterations, init="svd",
                                       tol=0)
    return tl.tenalg.multi_mode_dot(core, [u, v], modes=[0, 1])


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def decomposed_kernel(model, name, inits):
    """W′ of a decomposed layer from the written graph's factor convolutions."""
    nodes = nodes_by_name(model)
    if f"{name}/tucker_core" in nodes:
        a = inits[nodes[f"{name}/tucker_in"].input[1]][:, :, 0, 0].astype(np.float64)
        g = inits[nodes[f"{name}/tucker_core"].input[1]].astype(np.float64)
        u = inits[nodes[f"{name}/tucker_out"].input[1]][:, :, 0, 0].astype(np.float64)
        return np.einsum("ko,orhw,rc->kchw", u, g, a, optimize=True)
    a = inits[nodes[f"{name}/lowrank_in"].input[1]][:, :, 0, 0].astype(np.float64)
    u = inits[nodes[f"{name}/lowrank_out"].input[1]][:, :, 0, 0].astype(np.float64)
    return (u @ a)[:, :, None, None]


def chain(name, taps):
    return [f"{name}/{s}" for s in (("tucker_in", "tucker_core", "tucker_out") if taps > 1
                                    else ("lowrank_in", "lowrank_out"))]


def spread(src, n, dst):
    """`dst` with links to `n` of the images of `src`, evenly spread over their sorted names (all when fewer)."""
    imgs = sorted(f for f in os.listdir(src) if f.lower().endswith((".jpg", ".jpeg", ".png")))
    if len(imgs) < n:
        pytest.fail(f"{src} has {len(imgs)} images, fewer than {n}: run scripts/fetch-compress-frames.sh")
    dst.mkdir()
    for i in range(n):
        f = imgs[round(i * (len(imgs) - 1) / max(n - 1, 1))]
        (dst / f).symlink_to(src / f)
    return dst


@pytest.fixture(scope="module")
def frames():
    return (need(ROOT / ".cache/frames/calibration", "compress calibration frames"),
            need(ROOT / ".cache/frames/eval", "compress evaluation frames"))


@pytest.fixture(scope="module")
def few_frames(frames, tmp_path_factory):
    """12 calibration and 12 held-out images spread over the sets (which grow): a light, fixed-size run."""
    tmp = tmp_path_factory.mktemp("frames")
    return spread(frames[0], 12, tmp / "calibration"), spread(frames[1], 12, tmp / "eval")


@pytest.fixture(scope="module")
def original():
    return onnx.load(str(need(ROOT / MODEL, "model")))


@pytest.fixture(scope="module")
def compressed(kestrel_bin, few_frames, tmp_path_factory):
    out_dir, rep_dir = tmp_path_factory.mktemp("compressed"), tmp_path_factory.mktemp("report")
    out, report = out_dir / "yolov3-tiny-416-tucker.onnx", rep_dir / "report.json"
    ranks = ",".join(f"{n}={a}:{b}" for n, (a, b) in FIXED.items())
    r = kestrel(kestrel_bin, "compress", "--model", ROOT / MODEL, "--out", out, "--calibration", few_frames[0],
                "--eval", few_frames[1], "--report", report, "--factorisation", "hosvd", "--probe", "calibration",
                "--max-layer-error", BOUND, "--min-fidelity", 0.5, "--require-faster", "false", "--fps-rounds", 0,
                "--no-compare", "--include-head", "--ranks", ranks)
    assert r.returncode == 0, r.stderr
    # Written atomically: only the model in its directory, no temporary `.kestrel-compress-*.part` left.
    assert sorted(os.listdir(out_dir)) == [out.name]
    rep = json.loads(report.read_text())
    return {"path": out, "model": onnx.load(str(out)), "report": rep, "stdout": r.stdout,
            "layers": {l["name"]: l for l in rep["layers"]},
            "decomposed": [l for l in rep["layers"] if l["decomposed"]]}


def test_several_layers_decomposed_fixed_and_searched(compressed):
    rep, layers = compressed["report"], compressed["layers"]
    for name, ranks in FIXED.items():
        assert layers[name]["decomposed"] and tuple(layers[name]["ranks"]) == ranks, layers[name]
        assert layers[name]["reason"] == "ranks fixed (--ranks)"
    searched = [l for l in compressed["decomposed"] if l["name"] not in FIXED]
    assert searched, "no searched layer met the bound: the search checks below would be vacuous"
    assert rep["bound_used"] == BOUND and rep["tries"][-1]["meets"], rep["tries"]
    assert rep["output"]["path"] == str(compressed["path"])
    assert rep["output"]["sha256"] == sha256(compressed["path"])
    assert f"wrote {compressed['path']}" in compressed["stdout"]


def test_model_is_valid_with_the_same_interface_and_metadata(compressed, original):
    m = compressed["model"]
    onnx.checker.check_model(m, full_check=True)

    def interface(values):
        return [(v.name, v.type.tensor_type.elem_type,
                 [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]) for v in values]

    assert interface(m.graph.input) == interface(original.graph.input)
    assert interface(m.graph.output) == interface(original.graph.output)
    opsets = lambda model: [(o.domain, o.version) for o in model.opset_import]  # noqa: E731
    assert opsets(m) == opsets(original)
    before = {p.key: p.value for p in original.metadata_props}
    after = {p.key: p.value for p in m.metadata_props}
    assert METADATA_KEY not in before
    assert {k: v for k, v in after.items() if k != METADATA_KEY} == before


def test_metadata_round_trip(compressed):
    meta = json.loads({p.key: p.value for p in compressed["model"].metadata_props}[METADATA_KEY])
    rep = compressed["report"]
    assert meta["method"] == "tucker"
    assert meta["source_sha256"] == sha256(ROOT / MODEL) == rep["source"]["sha256"]
    assert meta["probe"] == "calibration"
    assert meta["factorisation"] == {"hosvd": {"hooi_iterations": 0}} == rep["factorisation"]
    assert meta["max_layer_error"] == rep["bound_used"]
    want = [{"name": l["name"], "ranks": l["ranks"], "error": l["errors"]["calibration"]}
            for l in compressed["decomposed"]]
    assert meta["layers"] == want


def test_graph_has_the_factor_convolutions(compressed, original):
    m, layers = compressed["model"], compressed["layers"]
    inits, orig_inits = inits_of(m), inits_of(original)
    nodes, orig_convs = nodes_by_name(m), conv_nodes(original)
    total_saved = 0
    for name, on in orig_convs.items():
        l = layers[name]
        w0 = orig_inits[on.input[1]]
        k, c, kh, kw = w0.shape
        assert l["kernel"] == [k, c, kh, kw] and l["params_before"] == w0.size
        if not l["decomposed"]:
            # Kept as it was: the same node, weights and bias.
            n = nodes[name]
            assert list(n.input) == list(on.input) and list(n.output) == list(on.output)
            assert all(np.array_equal(inits[i], orig_inits[i]) for i in on.input[1:])
            assert l["params_after"] == l["params_before"]
            continue
        assert name not in nodes, f"{name} still in the graph"
        assert on.input[1] not in inits, f"{name}'s original weight {on.input[1]} still in the graph"
        r_in, r_out = l["ranks"]
        names = chain(name, kh * kw)
        assert all(n in nodes and nodes[n].op_type == "Conv" for n in names), names
        shapes = [inits[nodes[n].input[1]].shape for n in names]
        if kh * kw > 1:
            assert shapes == [(r_in, c, 1, 1), (r_out, r_in, kh, kw), (k, r_out, 1, 1)], (name, shapes)
        else:
            assert r_in == r_out and shapes == [(r_in, c, 1, 1), (k, r_in, 1, 1)], (name, shapes)
        # Wired as a chain from the original's input to its output; the bias on the last step only.
        chain_nodes = [nodes[n] for n in names]
        assert chain_nodes[0].input[0] == on.input[0] and chain_nodes[-1].output[0] == on.output[0]
        for a, b in zip(chain_nodes, chain_nodes[1:]):
            assert b.input[0] == a.output[0]
        assert all(len(n.input) == 2 for n in chain_nodes[:-1])
        np.testing.assert_array_equal(inits[chain_nodes[-1].input[2]], orig_inits[on.input[2]])
        # The spatial step keeps the original's strides and pads.
        attrs = {a.name: helper.get_attribute_value(a) for a in on.attribute}
        spatial = {a.name: helper.get_attribute_value(a) for a in chain_nodes[1 if kh * kw > 1 else 0].attribute}
        for key in ("strides", "pads"):
            assert spatial.get(key, [1, 1] if key == "strides" else [0, 0, 0, 0]) == attrs.get(
                key, [1, 1] if key == "strides" else [0, 0, 0, 0]), (name, key)
        params = sum(int(np.prod(s)) for s in shapes)
        assert l["params_after"] == params == tucker_params(c, k, kh * kw, r_in, r_out)
        total_saved += l["params_before"] - params
    def count(model):
        return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)

    rep = compressed["report"]
    assert rep["source"]["params"] == count(original)
    assert rep["output"]["params"] == count(m) == count(original) - total_saved


def test_weight_error_matches_tensorly_hosvd(compressed, original):
    """errors.weight = ‖W − W′‖_F / ‖W‖_F of the chosen (HOSVD) factors equals tensorly's plain HOSVD
    (partial_tucker of modes 0 and 1, SVD init, no HOOI sweep) at the report's ranks, and the written
    factors reconstruct that same W′ (for a 1×1 kernel: the best rank-R approximation, Eckart–Young)."""
    orig_inits, convs = inits_of(original), conv_nodes(original)
    inits = inits_of(compressed["model"])
    for l in compressed["decomposed"]:
        w = orig_inits[convs[l["name"]].input[1]].astype(np.float64)
        r_in, r_out = l["ranks"]
        ref = hosvd_reconstruction(w, r_in, r_out)
        e = rel(w, ref)
        print(l["name"], l["ranks"], "report", l["errors"]["weight"], "tensorly", e)
        assert abs(l["errors"]["weight"] - e) <= 1e-3, (l["name"], l["errors"]["weight"], e)
        if w.shape[2:] == (1, 1):
            s = np.linalg.svd(w[:, :, 0, 0], compute_uv=False)
            assert abs(e - np.sqrt((s[r_in:] ** 2).sum() / (s ** 2).sum())) <= 1e-6
        # The written float32 factors give the same W′ (same subspaces, not merely the same error).
        got = decomposed_kernel(compressed["model"], l["name"], inits)
        assert np.linalg.norm(got - ref) / np.linalg.norm(w) <= 1e-4, l["name"]
        assert abs(rel(w, got) - l["errors"]["weight"]) <= 1e-3


def test_searched_ranks_are_the_smallest_rung_meeting_the_bound(compressed):
    rep = compressed["report"]
    bound = rep["bound_used"]
    searched = 0
    for l in rep["layers"]:
        if l["kernel"] is None:
            continue
        k, c, kh, kw = l["kernel"]
        taps = kh * kw
        trials = {tuple(t["ranks"]): t for t in l["search"]}
        for t in l["search"]:
            assert t["meets"] == (t["error"] <= bound), t
            assert t["params"] == tucker_params(c, k, taps, *t["ranks"]), t
        if l["name"] in FIXED:
            assert [tuple(t["ranks"]) for t in l["search"]] == [FIXED[l["name"]]]
            assert l["search"][0]["error"] == l["errors"]["calibration"]
            continue
        rungs = ladder(c, k, taps, rep["rank_multiple"])
        assert rungs and set(trials) <= set(rungs), (l["name"], sorted(trials))
        # The binary search starts at the largest rung, and needs at most about log2(rungs) + 1 tries.
        assert tuple(l["search"][0]["ranks"]) == rungs[-1]
        assert len(l["search"]) <= 2 + int(np.ceil(np.log2(len(rungs))))
        if not l["decomposed"]:
            assert not l["search"][0]["meets"], l  # (--require-faster false: the bound alone decides)
            continue
        searched += 1
        chosen = tuple(l["ranks"])
        assert l["errors"]["calibration"] <= bound and trials[chosen]["meets"], l
        assert trials[chosen]["error"] == l["errors"]["calibration"]
        i = rungs.index(chosen)
        if i > 0:
            below = rungs[i - 1]
            assert below in trials and not trials[below]["meets"], (l["name"], chosen, below, l["search"])
    assert searched >= 1


def layer_model(nodes, inits, c, h, w, batch):
    """The convolution chain `nodes` alone, input `x` [batch, C, H, W], output `y`."""
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes]
    nodes[0].input[0] = "x"
    nodes[-1].output[0] = "y"
    used = {i for n in nodes for i in n.input[1:]}
    graph = helper.make_graph(nodes, "layer",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, c, h, w])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(inits[u], u) for u in sorted(used)])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def test_random_probe_error_agrees_with_onnxruntime(compressed, original):
    """errors.random of the 3×3 layer conv_41 (the relative output error ‖y − y′‖/‖y‖ on N(0, 1) inputs of its
    input shape, bias included in y) against the original and decomposed layers run by onnxruntime on fresh
    random inputs.

    Why errors.random ≈ errors.weight: for iid N(0, 1) inputs every receptive-field patch x has covariance I,
    so E‖ΔW·x‖² = ‖ΔW‖²_F and E‖W·x + b‖² = ‖W‖²_F + ‖b‖² at each output position. The output error is the
    weight error, up to two effects: the bias adds ‖b‖² to the denominator only (a factor
    √(‖W‖²/(‖W‖² + ‖b‖²)), about 0.87 here), and at the zero-padded border positions some taps see no input.
    `expected` below is that expectation exactly (every position, its valid taps, and the bias).

    Tolerance: the measurement over 64 inputs sums 64·512·13·13 ≈ 5.5 M squared outputs; its spread, estimated
    from 8 batches of 8 inputs, is asserted below to be under 1 % (standard error), and the report's estimate
    (32 inputs of its own) has about √2 times that. 5 % relative is over 3.5 of those standard errors combined.
    """
    name = "conv_41"
    l = compressed["layers"][name]
    assert l["decomposed"] and l["kernel"][2:] == [3, 3]
    _, c, h, w = l["input"]
    orig_inits, inits = inits_of(original), inits_of(compressed["model"])
    on = conv_nodes(original)[name]
    nodes = nodes_by_name(compressed["model"])
    batch = 8
    before = layer_model([on], orig_inits, c, h, w, batch)
    after = layer_model([nodes[n] for n in chain(name, 9)], inits, c, h, w, batch)
    rng = np.random.default_rng(20240611)
    num, den = [], []
    for _ in range(8):
        x = rng.standard_normal((batch, c, h, w), dtype=np.float32)
        y, y2 = before.run(None, {"x": x})[0].astype(np.float64), after.run(None, {"x": x})[0].astype(np.float64)
        num.append(((y - y2) ** 2).sum())
        den.append((y ** 2).sum())
    num, den = np.array(num), np.array(den)
    measured = float(np.sqrt(num.sum() / den.sum()))
    per_batch = np.sqrt(num / den)
    se = per_batch.std(ddof=1) / np.sqrt(len(per_batch)) / measured
    # The closed-form expectation: per output position, the taps inside the image (pad 1, stride 1).
    w0 = orig_inits[on.input[1]].astype(np.float64)
    b = orig_inits[on.input[2]].astype(np.float64)
    dw = w0 - decomposed_kernel(compressed["model"], name, inits)
    d_tap, w_tap = (dw ** 2).sum(axis=(0, 1)), (w0 ** 2).sum(axis=(0, 1))
    en = ed = 0.0
    for oy in range(h):
        for ox in range(w):
            valid = np.zeros((3, 3), bool)
            valid[max(0, 1 - oy):min(3, h + 1 - oy), max(0, 1 - ox):min(3, w + 1 - ox)] = True
            en += d_tap[valid].sum()
            ed += w_tap[valid].sum() + (b ** 2).sum()
    expected = float(np.sqrt(en / ed))
    bias_only = l["errors"]["weight"] * np.sqrt((w0 ** 2).sum() / ((w0 ** 2).sum() + (b ** 2).sum()))
    print(name, "report random", l["errors"]["random"], "onnxruntime", measured, "(se", se, ") expected", expected,
          "weight", l["errors"]["weight"], "weight with the bias factor", bias_only)
    assert se < 0.01, se
    assert abs(l["errors"]["random"] - measured) <= 0.05 * measured
    assert abs(measured - expected) <= 0.05 * expected
    assert abs(l["errors"]["random"] - expected) <= 0.05 * expected
    # Close to the weight error once the bias is accounted for (the rest is the border).
    assert abs(expected - bias_only) <= 0.05 * bias_only
    assert abs(l["errors"]["random"] - l["errors"]["weight"]) <= 0.2 * l["errors"]["weight"]


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_compressed_model_detects(kestrel_bin, compressed):
    img = photo("person.jpg")
    got = json.loads(kestrel(kestrel_bin, "detect", "--model", compressed["path"], img).stdout)["detections"]
    want = json.loads(kestrel(kestrel_bin, "detect", "--model", ROOT / MODEL, img).stdout)["detections"]
    for label in ("person", "dog", "horse"):
        ours = [d for d in got if d["label"] == label and d["score"] >= 0.5]
        assert ours, (label, got)
        # The same object as the original's most confident one of that class.
        ref = max((d for d in want if d["label"] == label), key=lambda d: d["score"])
        assert max(iou(d["box"], ref["box"]) for d in ours) > 0.6, (label, ours, ref)


def test_compressed_model_benches(kestrel_bin, compressed, tmp_path):
    frames = need(ROOT / ".cache/bench/1080p", "1080p frames")
    js = tmp_path / "bench.json"
    r = kestrel(kestrel_bin, "bench", "--model", compressed["path"], "--frames", frames, "--reps", 1, "--n", 3,
                "--json", js)
    assert r.returncode == 0, r.stderr
    rows = json.loads(js.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["model"] == str(compressed["path"])
    assert rows[0]["bare_fps"]["median"] > 0 and rows[0]["pipeline_fps"]["median"] > 0
    assert compressed["path"].name in r.stdout


def test_compressed_model_runs_in_the_pipeline(kestrel_bin, compressed, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    names = ["dog.jpg", "horses.jpg", "person.jpg"]
    for n in names:
        (frames / n).write_bytes(photo(n).read_bytes())
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[source]\nkind = "images"\npath = "{frames}"\nfps_hz = 0.0\nloop_frames = false\n'
                   f'[model]\npath = "{compressed["path"]}"\n[metrics]\nlog_interval_ms = 0\n')
    r = subprocess.run([str(kestrel_bin), "run", "--no-socket", "--config", str(cfg)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["seq"] for x in lines] == [1, 2, 3] and all(x["type"] == "detections" for x in lines)
    assert all(x["detections"] for x in lines), lines
    # Frames in name order: the last is person.jpg.
    assert {"person", "dog", "horse"} <= {d["label"] for d in lines[2]["detections"] if d["score"] >= 0.5}


# --- bad input: exit status, a message naming the file and the reason, nothing left in the output directory

def assert_nothing_written(out_dir):
    left = os.listdir(out_dir)
    assert left == [], f"left in the output directory: {left}"


@pytest.fixture
def dirs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    return out, tmp_path


def compress_args(model, out, frames, *extra):
    return ["compress", "--model", model, "--out", out, "--calibration", frames[0], "--eval", frames[1], *extra]


def test_text_file_is_not_a_model(kestrel_bin, frames, dirs):
    out, tmp = dirs
    bad = tmp / "notes.onnx"
    bad.write_text("these are notes, not an ONNX model\n" * 20)
    r = kestrel(kestrel_bin, *compress_args(bad, out / "x.onnx", frames))
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert f"{bad} is not an ONNX model" in r.stderr, r.stderr
    assert_nothing_written(out)


def test_truncated_model(kestrel_bin, frames, dirs):
    out, tmp = dirs
    data = (ROOT / MODEL).read_bytes()
    bad = tmp / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    r = kestrel(kestrel_bin, *compress_args(bad, out / "x.onnx", frames))
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert str(bad) in r.stderr and "not an ONNX model" in r.stderr and "truncated" in r.stderr, r.stderr
    assert_nothing_written(out)


def test_model_without_convolutions_is_nothing_to_do(kestrel_bin, frames, dirs):
    out, tmp = dirs
    model = need(ROOT / "tests/fixtures/generated/v5_const.onnx", "test fixtures (tests/fixtures/make_fixtures.py)")
    report = tmp / "report.json"
    r = kestrel(kestrel_bin, *compress_args(model, out / "x.onnx", frames, "--report", report))
    assert r.returncode == 0, r.stderr
    assert "nothing to do: the model has no convolutions; no model written" in r.stdout, r.stdout
    assert_nothing_written(out)
    rep = json.loads(report.read_text())
    assert rep["nothing_to_do"] == "the model has no convolutions" and rep["output"] is None and rep["layers"] == []


def test_empty_calibration_directory(kestrel_bin, frames, dirs, model416):
    out, tmp = dirs
    empty = tmp / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("not an image\n")
    r = kestrel(kestrel_bin, "compress", "--model", model416, "--out", out / "x.onnx", "--calibration", empty,
                "--eval", frames[1])
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert f"calibration directory {empty} has no images" in r.stderr, r.stderr
    assert_nothing_written(out)


def test_output_directory_missing(kestrel_bin, frames, dirs, model416):
    out, tmp = dirs
    missing = tmp / "no" / "such"
    r = kestrel(kestrel_bin, *compress_args(model416, missing / "x.onnx", frames))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert f"directory {missing} does not exist" in r.stderr, r.stderr
    assert not (tmp / "no").exists()
    assert_nothing_written(out)


def test_output_is_the_input(kestrel_bin, frames, dirs, model416):
    out, tmp = dirs
    model = out / "model.onnx"
    model.write_bytes(model416.read_bytes())
    link = tmp / "link.onnx"
    link.symlink_to(model)
    digest = sha256(model)
    for target in (model, link, f"{out}/./model.onnx"):  # (a str: pathlib would drop the ".")
        r = kestrel(kestrel_bin, *compress_args(model, target, frames))
        assert r.returncode == 2, (target, r.returncode, r.stderr)
        assert "is the input model" in r.stderr and str(target) in r.stderr, r.stderr
    assert sha256(model) == digest
    assert sorted(os.listdir(out)) == ["model.onnx"]


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1", "1", "nan", "x"])
def test_max_layer_error_out_of_range(kestrel_bin, frames, dirs, model416, value):
    out, _ = dirs
    r = kestrel(kestrel_bin, *compress_args(model416, out / "x.onnx", frames, f"--max-layer-error={value}"))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "--max-layer-error" in r.stderr and f"'{value}'" in r.stderr and "strictly between 0 and 1" in r.stderr
    assert_nothing_written(out)


# --- a small run: an unreadable calibration image among good ones, and HOOI factors against tensorly

@pytest.fixture(scope="module")
def small_run(kestrel_bin, frames, original, tmp_path_factory):
    """3 calibration images and a garbage bad.jpg, one held-out photo, one 3×3 layer at fixed ranks with
    HOSVD + 3 HOOI sweeps, every other layer excluded (about 30 s)."""
    tmp = tmp_path_factory.mktemp("small")
    cal, ev, out_dir = spread(frames[0], 3, tmp / "cal"), tmp / "eval", tmp / "out"
    for d in (ev, out_dir):
        d.mkdir()
    bad = cal / "bad.jpg"
    bad.write_bytes(b"\x00garbage, not a JPEG\n" * 64)
    (ev / "person.jpg").symlink_to(photo("person.jpg"))
    out, report = out_dir / "small.onnx", tmp / "report.json"
    exclude = ",".join(n for n in conv_nodes(original) if n != HOOI_LAYER)
    r = kestrel(kestrel_bin, "compress", "--model", ROOT / MODEL, "--out", out, "--calibration", cal, "--eval", ev,
                "--report", report, "--fps-rounds", 0, "--no-compare", "--require-faster", "false",
                "--max-layer-error", BOUND, "--min-fidelity", 0.01, "--factorisation", "hosvd",
                "--hooi-iterations", HOOI_ITERS, "--ranks", f"{HOOI_LAYER}={HOOI_RANKS[0]}:{HOOI_RANKS[1]}",
                "--exclude", exclude)
    assert r.returncode == 0, r.stderr
    return {"r": r, "bad": bad, "out": out, "out_dir": out_dir, "report": json.loads(report.read_text())}


def test_unreadable_calibration_image_is_skipped(small_run):
    r, bad, rep = small_run["r"], small_run["bad"], small_run["report"]
    assert "calibration: 3 of 4 images used, 1 skipped" in r.stdout, r.stdout
    assert f"skipped {bad}: " in r.stdout and "not a JPEG or PNG image" in r.stdout, r.stdout
    assert rep["calibration"]["files"] == 4 and rep["calibration"]["used"] == 3
    [s] = rep["calibration"]["skipped"]
    assert s["file"] == str(bad) and "not a JPEG or PNG image" in s["reason"] and str(bad) in s["reason"]
    assert rep["evaluation"] == {"files": 1, "used": 1, "skipped": []}
    # The model was still written, atomically (nothing else left beside it).
    assert sorted(os.listdir(small_run["out_dir"])) == [small_run["out"].name]
    assert [l["name"] for l in rep["layers"] if l["decomposed"]] == [HOOI_LAYER]
    assert all(l["reason"] == "excluded (--exclude)" for l in rep["layers"] if l["name"] != HOOI_LAYER)


def test_hooi_weight_error_matches_tensorly(small_run, original):
    """--hooi-iterations 3: the weight error equals tensorly's partial_tucker with exactly 3 HOOI sweeps from
    the SVD start (the same alternation: output mode, then input mode), and is below plain HOSVD's."""
    rep = small_run["report"]
    assert rep["factorisation"] == {"hosvd": {"hooi_iterations": HOOI_ITERS}}
    l = next(l for l in rep["layers"] if l["name"] == HOOI_LAYER)
    assert tuple(l["ranks"]) == HOOI_RANKS
    w = inits_of(original)[conv_nodes(original)[HOOI_LAYER].input[1]].astype(np.float64)
    hooi = rel(w, hosvd_reconstruction(w, *HOOI_RANKS, iterations=HOOI_ITERS))
    hosvd = rel(w, hosvd_reconstruction(w, *HOOI_RANKS))
    print(HOOI_LAYER, "report", l["errors"]["weight"], "tensorly HOOI", hooi, "HOSVD", hosvd)
    assert abs(l["errors"]["weight"] - hooi) <= 1e-3
    assert hooi < hosvd - 1e-3, (hooi, hosvd)
    m = onnx.load(str(small_run["out"]))
    assert abs(rel(w, decomposed_kernel(m, HOOI_LAYER, inits_of(m))) - l["errors"]["weight"]) <= 1e-3
