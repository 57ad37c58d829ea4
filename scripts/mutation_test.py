#!/usr/bin/env python3
"""Mutation testing: does the test suite notice when the code is wrong?

Each mutation below is one small, deliberate bug (a sign flipped or a term dropped in a
backward, an off-by-one in a tile loop, a missing barrier, a temperature dropped; and bugs that
only a check of the whole step can see: a weight layout wrong on the GPU only, a 16-bit cast
dropped, the center or the optimizer applied in the wrong order, the learning-rate schedule a
step off). The script copies the tree once to a work directory, builds it there (the CPU build,
and the CUDA-emulator build for mutations of device code), checks that the selected tests pass
on the unmutated copy, then applies the mutations one at a time, rebuilds incrementally, runs
the tests that could see each, and restores the file. A mutation is *killed* when a test fails;
it *survives* when they all pass (the suite has a hole); it is *invalid* when the copy does not
build or the text to replace is not found exactly once (the list needs updating).

Usage: scripts/mutation_test.py [--work DIR] [--only ID[,ID...]] [--list] [--table FILE] [-j N]
Prints a Markdown table (docs/testing.md holds the last one); exits 1 when any mutation survived
or was invalid. A full run takes about half an hour on 2 cores (the first build most of it).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Test selections (ctest -R). The per-op suites of an area, and the end-to-end checks.
CPU_OPS = r"^(engine|kernels|model):"
STEP_E2E = r"^apps:train: (three steps|the float32 step)"
# (the emulated step tests take a minute each: a mutation runs the ones that could see it)
GPU_OPS = r"^gpu:(gpu conv2d|gpu batch_norm|gpu ops|fused)"
GPU_FP32_STEP = r"^gpu:gpu train step .fp32."
GPU_16BIT_STEP = r"^gpu:gpu train step in bf16"

# id, kind, what, build ("cpu" or "emu"), tests (ctest regex), edits [(file, find, replace)].
MUTATIONS = [
    # ---- per-op mutations
    ("bn-backward-term", "op", "batch norm's CPU backward drops the x̂·mean(dz·x̂) term", "cpu",
     CPU_OPS + "|" + STEP_E2E,
     [("kernels/batch_norm_ref.cpp", "(dz - mean_dz - xhat * mean_dzx)", "(dz - mean_dz)")]),
    ("distill-backward-sign", "op", "self-distillation's CPU backward with its sign flipped",
     "cpu", CPU_OPS + "|" + STEP_E2E,
     [("kernels/self_distill_ref.cpp", "T(scale * (sa - w))", "T(scale * (w - sa))")]),
    ("lars-no-wd", "op", "LARS without weight decay", "cpu", CPU_OPS + "|" + STEP_E2E,
     [("engine/optim.cpp",
       "    if (p.dim() > 1) {\n      g = add(g, mul_scalar(p, opt_.weight_decay));\n",
       "    if (p.dim() > 1) {\n")]),
    ("center-momentum-swap", "op", "the center's momentum and (1 - momentum) swapped", "cpu",
     CPU_OPS + "|" + STEP_E2E,
     [("model/slotcon_loss.cpp",
       "axpby_(center, cfg.center_momentum, reshape(bc, center.shape()), 1.0 - cfg.center_momentum)",
       "axpby_(center, 1.0 - cfg.center_momentum, reshape(bc, center.shape()), cfg.center_momentum)")]),
    ("cuda-tau-dropped", "op", "the temperature dropped from the CUDA prototype assignment", "emu",
     r"^gpu:(proto_assign|fused)",
     [("kernels/proto_assign.cu", "s.K, s.P, dots, A(1.0 / tau), attn);", "s.K, s.P, dots, A(1.0), attn);")]),
    ("cuda-tile-k-off-by-one", "op", "the tile GEMM skips the last k of every tile (FP32 path)",
     "emu", r"^gpu:(proto_assign|slot_pool|slot_contrast|fused)",
     [("kernels/tile_gemm.cuh", "for (int kk = 0; kk < kTileK; ++kk) {",
       "for (int kk = 0; kk < kTileK - 1; ++kk) {")]),
    ("cuda-missing-barrier", "op", "a __syncthreads missing from the contrast's index scan",
     "emu", r"^gpu:(slot_contrast|fused)",
     [("kernels/slot_contrast.cu",
       "    const int v = t >= o ? scan[t - o] : 0;\n    __syncthreads();\n",
       "    const int v = t >= o ? scan[t - o] : 0;\n")]),
    ("cuda-conv-dw-1pct", "op", "the GPU convolution's weight gradient 1 % too large", "emu",
     r"^gpu:gpu conv2d",
     [("kernels/conv2d.cu", "cudnnConvolutionBackwardFilter(h, p.scalar(1.0, &d1, &f1)",
       "cudnnConvolutionBackwardFilter(h, p.scalar(1.01, &d1, &f1)")]),
    ("uncounted-launch", "op", "a kernel launch without its count (SC_KERNEL_LAUNCHED dropped)",
     "emu", r"^gpu:gpu train step: a steady-state",
     [("kernels/self_distill.cu", "  SC_KERNEL_LAUNCHED(what);\n}\n\ntemplate <class T>\nvoid self_distill_backward_cuda",
       "}\n\ntemplate <class T>\nvoid self_distill_backward_cuda")]),
    # ---- mutations only a check of the whole step can see
    ("gpu-channels-last-weights", "end-to-end",
     "the channels-last conversion of the conv weights keeps the NCHW strides, on the GPU only",
     "emu", GPU_OPS + "|" + GPU_FP32_STEP, [("model/resnet_layers.cpp", "    d.strides = cl.strides();\n",
                         "    d.strides = t.is_cuda() ? t.strides() : cl.strides();\n")]),
    ("bf16-cast-dropped", "end-to-end", "precision bf16 runs the backbone in F32 (the cast dropped)",
     "emu", GPU_OPS + "|" + GPU_16BIT_STEP, [("model/train_step.cpp", "case Precision::BF16: return DType::BF16;",
                        "case Precision::BF16: return DType::F32;")]),
    ("fp16-unscale-dropped", "end-to-end",
     "fp16: the gradients reach the optimizer still multiplied by the loss scale", "emu",
     GPU_OPS + "|" + GPU_16BIT_STEP,
     [("model/train_step.cpp", "    scaler_->unscale_(tensors_, found_);", "    (void)tensors_;")]),
    ("center-used-after-update", "end-to-end",
     "the group loss's backward sees the center after this step's update (forward before)",
     "cpu", CPU_OPS + "|" + STEP_E2E,
     [("model/slotcon_loss.cpp", "const Tensor c_old = reshape(center.detach().clone(), {K});",
       "const Tensor c_old = reshape(center.detach(), {K});")]),
    ("ema-after-optimizer", "end-to-end",
     "the teacher's EMA applied after the optimizer step instead of before the forwards", "cpu",
     CPU_OPS + "|" + STEP_E2E,
     [("model/train_step.cpp", "    model_.momentum_update(teacher_momentum);\n  }\n",
       "  }\n"),
      ("model/train_step.cpp", "  if (scaler_) scaler_->update(found_);",
       "  model_.momentum_update(teacher_momentum);\n  if (scaler_) scaler_->update(found_);")]),
    ("lr-schedule-off-by-one", "end-to-end", "the learning rate of step s taken from step s + 1",
     "cpu", CPU_OPS + "|" + r"^apps:",
     [("apps/cmd_train.cpp", "lr_at(step_, epoch_steps_total_,", "lr_at(step_ + 1, epoch_steps_total_,")]),
    ("float32-gemm-scaled", "end-to-end",
     "the float32 convolution GEMM 1e-4 too large (float64 untouched)", "cpu",
     CPU_OPS + "|" + STEP_E2E,
     [("kernels/conv2d_ref.cpp",
       "              int(n), int(k), alpha, A, int(lda), B, int(ldb), beta, C, int(ldc));\n}\n"
       "inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha,",
       "              int(n), int(k), alpha * 1.0001f, A, int(lda), B, int(ldb), beta, C, int(ldc));\n}\n"
       "inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha,")]),
]

AREAS = ("engine", "kernels", "data", "model", "apps", "gpu", "cuda_emu")


def sh(cmd, cwd=None, log=None, timeout=None):
    out = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, timeout=timeout)
    if log:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{out.stdout}\n")
    return out.returncode, out.stdout


def sync_tree(work):
    """Copy the tracked and untracked-not-ignored files into work/src, rewriting only the files
    whose content differs (so that the builds there stay incremental)."""
    src = os.path.join(work, "src")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           stdout=subprocess.PIPE, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        a, b = os.path.join(ROOT, rel), os.path.join(src, rel)
        if not os.path.isfile(a):
            continue
        data = open(a, "rb").read()
        if os.path.exists(b) and open(b, "rb").read() == data:
            continue
        os.makedirs(os.path.dirname(b), exist_ok=True)
        with open(b, "wb") as f:
            f.write(data)
        shutil.copymode(a, b)
    return src


def targets_for(regex, build):
    t = {"slotcon"} | {f"test_{a}" for a in AREAS if re.search(rf"\b{a}\b", regex)}
    if build == "emu":
        t.add("test_gpu")
    return sorted(t)


def build(work, kind, targets, jobs, log):
    src = os.path.join(work, "src")
    bdir = os.path.join(work, "build" if kind == "cpu" else "build-emu")
    if not os.path.exists(os.path.join(bdir, "CMakeCache.txt")):
        # the CPU build without nvcc: its tests run no CUDA, and the device code is the emulator
        # build's to test
        opts = ["-DCMAKE_BUILD_TYPE=Release", "-DSLOTCON_CUDA=OFF"]
        if kind == "emu":
            opts += ["-DSLOTCON_CUDA_EMU=ON"]
        rc, _ = sh(["cmake", "-S", src, "-B", bdir] + opts, log=log)
        if rc:
            return rc, bdir
    rc, _ = sh(["cmake", "--build", bdir, "-j", str(jobs), "--target"] + targets, log=log)
    return rc, bdir


def run_tests(bdir, regex, log, timeout=1800):
    rc, out = sh(["ctest", "-R", regex, "--timeout", "900", "-j", "1"], cwd=bdir, log=log,
                 timeout=timeout)
    tail = out.split("The following tests FAILED:")[-1] if "tests FAILED" in out else ""
    failed = re.findall(r"^\s*\d+ - (.*) \([^()]*\)\s*$", tail, re.M)
    ran = re.search(r"tests passed, (\d+) tests failed out of (\d+)", out)
    total = int(ran.group(2)) if ran else 0
    return rc, failed, total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/slotcon-mutants")
    ap.add_argument("--only", default="", help="comma-separated mutation ids")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--table", help="also write the Markdown table to this file")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2)
    a = ap.parse_args()
    muts = [m for m in MUTATIONS if not a.only or m[0] in a.only.split(",")]
    if a.list:
        for m in muts:
            print(f"{m[0]:28s} {m[1]:10s} {m[3]:3s}  {m[2]}")
        return 0
    os.makedirs(a.work, exist_ok=True)
    log = os.path.join(a.work, "mutation.log")
    open(log, "w").close()
    src = sync_tree(a.work)
    print(f"mutation_test: tree copied to {src}; log {log}", flush=True)

    # The baseline: the unmutated copy builds and the selected tests pass.
    for kind in ("cpu", "emu"):
        sel = [m for m in muts if m[3] == kind]
        if not sel:
            continue
        regex = "|".join(sorted({m[4] for m in sel}))
        targets = sorted({t for m in sel for t in targets_for(m[4], kind)})
        t0 = time.time()
        rc, bdir = build(a.work, kind, targets, a.jobs, log)
        if rc:
            print(f"baseline ({kind}) does not build; see {log}")
            return 1
        rc, failed, total = run_tests(bdir, regex, log)
        print(f"baseline ({kind}): {total} tests, {len(failed)} failed "
              f"({time.time() - t0:.0f} s)", flush=True)
        if rc or failed or total == 0:
            print(f"baseline ({kind}) fails: {failed}; see {log}")
            return 1

    rows, bad = [], 0
    for mid, kind, what, bkind, regex, edits in muts:
        t0 = time.time()
        originals, status, killers, total = {}, "", [], 0
        try:
            for rel, find, repl in edits:
                path = os.path.join(src, rel)
                text = originals.get(rel) or open(path).read()
                originals.setdefault(rel, text)
                cur = open(path).read()
                if cur.count(find) != 1:
                    status = f"invalid (text found {cur.count(find)} times in {rel})"
                    break
                with open(path, "w") as f:
                    f.write(cur.replace(find, repl))
            if not status:
                rc, bdir = build(a.work, bkind, targets_for(regex, bkind), a.jobs, log)
                if rc:
                    status = "invalid (does not build)"
                else:
                    rc, killers, total = run_tests(bdir, regex, log)
                    status = "killed" if (rc or killers) else "SURVIVED"
        finally:
            for rel, text in originals.items():
                with open(os.path.join(src, rel), "w") as f:
                    f.write(text)
        if status != "killed":
            bad += 1
        files = ", ".join(sorted({e[0] for e in edits}))
        shown = "; ".join(k for k in killers[:4]) + (f" (+{len(killers) - 4})" if len(killers) > 4 else "")
        rows.append((mid, kind, what, files, status, f"{len(killers)} of {total}", shown))
        print(f"{mid}: {status} ({len(killers)} of {total} tests failed, {time.time() - t0:.0f} s)",
              flush=True)

    table = ["| mutation | kind | the bug | file | result | tests failed | failed (first 4) |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| `{r[0]}` | {r[1]} | {r[2]} | `{r[3]}` | {r[4]} | {r[5]} | {r[6]} |" for r in rows]
    print("\n".join(table))
    if a.table:
        with open(a.table, "w") as f:
            f.write("\n".join(table) + "\n")
    print(f"mutation_test: {len(rows) - bad} of {len(rows)} killed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
