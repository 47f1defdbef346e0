"""libvirt CPU feature names to os-traits names (HW_CPU_X86_AVX2 ...), as placement uses them.

Only features that os-traits defines are mapped; the rest keep their libvirt names in
``Host.cpu_features`` and are compared there.
"""

from __future__ import annotations

from collections.abc import Iterable

_X86 = {
    "mmx": "MMX", "sse": "SSE", "sse2": "SSE2", "pni": "SSE3", "sse3": "SSE3", "ssse3": "SSSE3",
    "sse4.1": "SSE41", "sse4.2": "SSE42", "sse4a": "SSE4A", "avx": "AVX", "avx2": "AVX2",
    "fma": "FMA3", "fma4": "FMA4", "f16c": "F16C", "aes": "AESNI", "pclmuldq": "CLMUL",
    "abm": "ABM", "bmi1": "BMI", "bmi2": "BMI2", "tbm": "TBM", "sha-ni": "SHA", "mpx": "MPX",
    "sgx": "SGX", "xop": "XOP", "pdpe1gb": "PDPE1GB", "stibp": "STIBP", "ssbd": "SSBD",
    "avx512f": "AVX512F", "avx512cd": "AVX512CD", "avx512pf": "AVX512PF", "avx512er": "AVX512ER",
    "avx512vl": "AVX512VL", "avx512bw": "AVX512BW", "avx512dq": "AVX512DQ",
    "avx512vnni": "AVX512VNNI", "avx512vbmi": "AVX512VBMI", "avx512ifma": "AVX512IFMA",
    "avx512vbmi2": "AVX512VBMI2", "avx512bitalg": "AVX512BITALG",
    "avx512-vpopcntdq": "AVX512VPOPCNTDQ", "gfni": "AVX512GFNI", "vaes": "AVX512VAES",
    "vpclmulqdq": "AVX512VPCLMULQDQ", "vmx": "VMX", "svm": "AMD_SVM", "amd-ssbd": "AMD_SSBD",
    "amd-no-ssb": "AMD_NO_SSB", "ibpb": "AMD_IBPB",
}
_AARCH64 = {"fp": "FP", "asimd": "ASIMD", "aes": "AES", "pmull": "PMULL", "sha1": "SHA1",
            "sha2": "SHA2", "crc32": "CRC32", "atomics": "FHM", "sve": "SVE", "sve2": "SVE2"}


def cpu_traits(arch: str, features: Iterable[str]) -> list[str]:
    """The sorted os-traits names for the libvirt feature names of a CPU of ``arch``."""
    if arch in ("x86_64", "i686"):
        table, prefix = _X86, "HW_CPU_X86_"
    elif arch == "aarch64":
        table, prefix = _AARCH64, "HW_CPU_AARCH64_"
    else:
        return []
    return sorted({prefix + table[f] for f in features if f in table})
