"""Builds fpgm_ext._C: the C++ kernels always, the CUDA kernels where they can be built.

Build switches (environment):
  FPGM_EXT_CUDA=1   build the CUDA kernels, fail loudly if that is impossible
  FPGM_EXT_CUDA=0   skip them
  (unset)           build them when nvcc and a CUDA build of torch are present
  TORCH_CUDA_ARCH_LIST   as torch reads it, e.g. "9.0"; without it and without a visible
                         GPU, "9.0"
  FPGM_EXT_DEBUG=1  -O0 -g
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cuda_home():
    # /usr/local/bin/nvcc may be a wrapper that makes torch guess CUDA_HOME=/usr/local,
    # where -lcudart is not found: prefer the real toolkit location.
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return os.path.realpath("/usr/local/cuda")
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def _want_cuda():
    switch = os.environ.get("FPGM_EXT_CUDA", "")
    home = _cuda_home()
    have = torch.version.cuda is not None and home is not None and os.path.exists(
        os.path.join(home, "bin", "nvcc"))
    cuda_sources = glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
    if switch == "0":
        return False, "disabled by FPGM_EXT_CUDA=0"
    if not cuda_sources:
        if switch == "1":
            sys.exit("fpgm_ext: FPGM_EXT_CUDA=1 but csrc/cuda holds no CUDA sources yet")
        return False, "no CUDA sources in csrc/cuda"
    if switch == "1" and not have:
        sys.exit(f"fpgm_ext: FPGM_EXT_CUDA=1 but CUDA cannot be built: torch.version.cuda="
                 f"{torch.version.cuda}, CUDA_HOME={home}")
    if have:
        os.environ.setdefault("CUDA_HOME", home)
        cpp_extension.CUDA_HOME = home
        return True, f"nvcc in {home}, torch built with CUDA {torch.version.cuda}"
    return False, "no nvcc or a CPU-only torch"


def extensions():
    with_cuda, why = _want_cuda()
    debug = os.environ.get("FPGM_EXT_DEBUG") == "1"
    sources = [os.path.join("csrc", f) for f in ("ops.cpp", "build_info.cpp", "python_module.cpp", "device_plans.cpp")]
    sources += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    if with_cuda and not arch and not torch.cuda.is_available():
        # torch would otherwise compile for every architecture it knows (very slow); with a
        # GPU present it picks that GPU's. Without one, default to Hopper (H100/H200).
        arch = os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    defines = [("FPGM_EXT_BUILD_SYSTEM", '"setup.py"'), ("FPGM_EXT_CUDA_ARCH_LIST", f'"{arch}"')]
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    # -fno-math-errno lets std::sqrt vectorise; it changes no result, only errno.
    cxx += ["-fopenmp", "-fno-math-errno"]
    extra = {"cxx": cxx}
    ext_cls = cpp_extension.CppExtension
    if with_cuda:
        ext_cls = cpp_extension.CUDAExtension
        sources += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
        defines += [("WITH_CUDA", None), ("CUDA_VERSION_STRING", f'"{torch.version.cuda}"')]
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr"] + (["-g", "-G"] if debug else [])
    print("fpgm_ext build configuration:")
    for key, value in [
        ("torch", torch.__version__), ("torch CUDA", torch.version.cuda),
        ("CUDA kernels", f"{with_cuda} ({why})"), ("CUDA_HOME", os.environ.get("CUDA_HOME")),
        ("TORCH_CUDA_ARCH_LIST", arch or "(torch default)"), ("debug", debug),
        ("sources", " ".join(sources)),
    ]:
        print(f"  {key:22s}{value}")
    return [ext_cls("fpgm_ext._C", sources, define_macros=defines, extra_compile_args=extra,
                    extra_link_args=["-fopenmp"])]


# The device code the CuPy backend compiles at run time (fpgm_ext/cupy_backend/nvrtc.py):
# csrc/accuracy.h and csrc/cuda/kernels/*.cuh, copied into the package with their relative
# layout (distance.cuh includes "../../accuracy.h"). An editable install reads csrc/.
DEVICE_CODE = ["accuracy.h", *sorted(os.path.relpath(p, os.path.join(ROOT, "csrc"))
                                     for p in glob.glob(os.path.join(ROOT, "csrc", "cuda", "kernels", "*.cuh")))]


class BuildPyWithDeviceCode(build_py):
    def run(self):
        super().run()
        for rel in DEVICE_CODE:
            dst = os.path.join(self.build_lib, "fpgm_ext", "_device_code", rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            self.copy_file(os.path.join(ROOT, "csrc", rel), dst)


setup(
    packages=find_packages(include=["fpgm_ext", "fpgm_ext.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension, "build_py": BuildPyWithDeviceCode},
)
