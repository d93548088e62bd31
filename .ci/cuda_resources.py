#!/usr/bin/env python3
"""Resource usage of the fpgm CUDA kernels in a built library, as ptxas left it.

    python .ci/cuda_resources.py [path/to/_C*.so]

Without an argument: the _C*.so of the installed fpgm_ext package, found without
importing it (nor torch). Runs `cuobjdump --dump-resource-usage` and prints, per kernel:
registers per thread, stack frame and local memory bytes per thread, static shared memory
per block, threads per block (the __launch_bounds__ of csrc/cuda/kernels/*.cuh, read from
the source so that they cannot drift) and resident blocks per SM on sm_90 (H100 / H200),
computed as cuda_occupancy.h does (no dynamic shared memory: the launches pass 0).

cuobjdump does not report spill bytes (ptxas -v does): a kernel with STACK 0 and LOCAL 0
cannot spill; a stack frame may hold spills, local arrays or printf arguments.

Exit status: 0, or non-zero when cuobjdump is missing or the library holds no fpgm kernel.
"""
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS_DIR = os.path.join(ROOT, "csrc", "cuda", "kernels")

# Per-SM limits by architecture (CUDA C Programming Guide, compute capability 9.0;
# cudaDeviceProp of an H100 / H200). Blocks per SM are given for these only.
SM_LIMITS = {
    "sm_90": dict(regs=65536, reg_granularity=256, sub_partitions=4, max_regs_per_thread=255,
                  max_warps=64, max_blocks=32, smem=228 * 1024, smem_per_block=227 * 1024,
                  smem_reserved=1024, smem_granularity=128),
}


def find_library():
    spec = importlib.util.find_spec("fpgm_ext")  # locates the package, does not run it
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(glob.glob(os.path.join(folder, "_C*.so")))
        if found:
            return found[0]
    return None


def find_cuobjdump():
    tool = shutil.which("cuobjdump")
    if tool:
        return tool
    cuda_home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    candidates = [os.path.join(cuda_home, "bin", "cuobjdump"), "/usr/local/cuda/bin/cuobjdump"]
    spec = importlib.util.find_spec("triton")  # triton bundles one; located, not imported
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidates.append(os.path.join(folder, "backends", "nvidia", "bin", "cuobjdump"))
    for tool in candidates:
        if os.path.isfile(tool) and os.access(tool, os.X_OK):
            return tool
    return None


def launch_bounds():
    """{kernel base name: threads per block} from the __launch_bounds__ of the .cuh files,
    the constants (constexpr int / long long NAME = expression;) of every file evaluated
    first (tables.cuh holds the block sizes the kernels of the other files use)."""
    consts, bounds = {}, {}
    const_re = re.compile(
        r"constexpr\s+(?:unsigned\s+)?(?:int|long\s+long|long)\s+(\w+)\s*=\s*([^;]+);")
    kernel_re = re.compile(r"__global__\s+void\s+__launch_bounds__\(([^)]*)\)\s+(\w+)\s*\(")
    texts = []
    for path in sorted(glob.glob(os.path.join(KERNELS_DIR, "*.cuh"))):
        with open(path, encoding="utf-8") as f:
            texts.append(re.sub(r"//[^\n]*", "", f.read()))
    for _ in range(2):  # twice: a constant may use one defined in a later file
        for text in texts:
            for name, expr in const_re.findall(text):
                if re.fullmatch(r"[\w\s+\-*/()]+", expr):
                    try:
                        value = eval(expr.replace("/", "//"), {"__builtins__": {}}, dict(consts))
                        consts[name] = int(value)
                    except Exception:  # an expression of something else than constants: skip it
                        pass
    for text in texts:
        for expr, kernel in kernel_re.findall(text):
            first = expr.split(",")[0].strip()  # (max threads[, min blocks])
            value = consts.get(first, int(first) if first.isdigit() else None)
            if value is not None:
                bounds[kernel] = value
    return bounds


def demangler():
    for tool in (shutil.which("c++filt"), shutil.which("cu++filt"), "/usr/local/cuda/bin/cu++filt"):
        if tool and os.path.isfile(tool):
            return tool
    return None


def readable(mangled, demangled):
    """void fpgm::kernels::tile_kernel<float, false, true>(fpgm::kernels::DistanceArgs<float>)
    -> tile_kernel<float, false, true>."""
    name = demangled if demangled and demangled != mangled else mangled
    if name == mangled:
        return name
    name = re.sub(r"^void\s+", "", name)
    depth = 0
    for i, c in enumerate(name):  # drop the parameter list: the first '(' outside <...>
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "(" and depth == 0:
            name = name[:i]
            break
    return re.sub(r"\b(?:fpgm::kernels|fpgm|c10)::", "", name)


def base_name(mangled):
    """_ZN4fpgm7kernels11tile_kernelIfLb0ELb0EEEv... -> tile_kernel (the last name of the
    nested name, before its template arguments), without a demangler."""
    m = re.match(r"_ZN?", mangled)
    i, name = (m.end() if m else 0), mangled
    while True:
        m = re.match(r"\d+", mangled[i:])
        if not m:
            return name
        n = int(m.group())
        name = mangled[i + m.end():i + m.end() + n]
        i += m.end() + n


def parse(dump):
    """[(arch, mangled name, {REG: .., STACK: .., SHARED: .., LOCAL: ..})], in dump order."""
    rows, arch, func = [], "?", None
    for line in dump.splitlines():
        m = re.match(r"\s*arch\s*=\s*(\S+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function\s+(\S+?):?\s*$", line)
        if m:
            func = m.group(1)
            continue
        if func and "REG:" in line:
            fields = {k: int(v) for k, v in re.findall(r"\b([A-Z]+):(\d+)", line)}
            rows.append((arch, func, fields))
            func = None
    return rows


def blocks_per_sm(arch, regs, smem, threads):
    """Resident blocks per SM and the limiting resource, as cuda_occupancy.h computes them."""
    lim = SM_LIMITS.get(arch)
    if lim is None or not threads:
        return None, "-"
    warps = -(-threads // 32)
    limits = {"warps": lim["max_warps"] // warps, "blocks": lim["max_blocks"]}
    # Registers: allocated per warp (rounded up to the granularity), in each sub-partition.
    per_warp = -(-regs * 32 // lim["reg_granularity"]) * lim["reg_granularity"]
    if regs > lim["max_regs_per_thread"]:
        limits["regs"] = 0
    elif per_warp:
        per_sub = (lim["regs"] // lim["sub_partitions"]) // per_warp
        limits["regs"] = per_sub * lim["sub_partitions"] // warps
    # Shared memory: static + the 1 KB the driver reserves per block, 128-byte granularity.
    gran = lim["smem_granularity"]
    block_smem = -(-(smem + lim["smem_reserved"]) // gran) * gran
    if smem > lim["smem_per_block"]:
        limits["smem"] = 0
    else:
        limits["smem"] = lim["smem"] // block_smem
    n = min(limits.values())
    return n, "/".join(k for k, v in limits.items() if v == n)


def main():
    lib = sys.argv[1] if len(sys.argv) > 1 else find_library()
    if not lib or not os.path.isfile(lib):
        sys.exit("cuda_resources: no library (give the path of _C*.so, or install fpgm_ext): %r"
                 % lib)
    tool = find_cuobjdump()
    if tool is None:
        sys.exit("cuda_resources: cuobjdump not found "
                 "(PATH, $CUDA_HOME/bin, /usr/local/cuda/bin, triton's bundled copy)")
    proc = subprocess.run([tool, "--dump-resource-usage", lib], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit("cuda_resources: %s failed: %s" % (tool, (proc.stderr or proc.stdout).strip()))
    rows, seen = [], set()
    for arch, func, fields in parse(proc.stdout):
        if "fpgm" in func and (arch, func) not in seen:
            seen.add((arch, func))
            rows.append((arch, func, fields))
    if not rows:
        sys.exit("cuda_resources: no fpgm kernel in %s (built without CUDA?)" % lib)

    demangled = {}
    filt = demangler()
    if filt:
        names = [func for _, func, _ in rows]
        out = subprocess.run([filt], input="\n".join(names) + "\n", capture_output=True, text=True)
        if out.returncode == 0 and len(out.stdout.splitlines()) == len(names):
            demangled = dict(zip(names, out.stdout.splitlines()))
    threads = launch_bounds()

    print("library:   %s" % lib)
    print("cuobjdump: %s" % tool)
    print("per thread: registers, stack frame and local memory bytes; per block: static shared")
    print("memory bytes and threads (__launch_bounds__); blocks/SM resident on sm_90 (H100/H200),")
    print("and the limit that sets it (regs, warps, smem, blocks). cuobjdump reports no spill")
    print("bytes: STACK 0 and LOCAL 0 mean no spills; a stack frame may hold some (ptxas -v).")
    table = [("kernel", "arch", "regs", "stack", "local", "shared", "threads", "blocks/SM",
              "limit")]
    for arch, func, f in rows:
        name = readable(func, demangled.get(func))
        t = threads.get(base_name(func))
        n, limit = blocks_per_sm(arch, f.get("REG", 0), f.get("SHARED", 0), t)
        table.append((name, arch, str(f.get("REG", "?")), str(f.get("STACK", "?")),
                      str(f.get("LOCAL", "?")), str(f.get("SHARED", "?")),
                      str(t) if t else "?", "-" if n is None else str(n), limit))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for i, r in enumerate(table):
        cells = (c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
        print("  ".join(cells).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    unknown = sorted({readable(func, demangled.get(func)) for _, func, _ in rows
                      if not threads.get(base_name(func))})
    if unknown:  # a __launch_bounds__ this script could not read: fix the script, not the table
        print("cuda_resources: no threads per block found for " + ", ".join(unknown))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
