#pragma once
// Function multiversioning for hot loops: an AVX2 clone next to the portable one, picked at load
// time, so packages built for baseline x86-64 still use 8-wide vectors. Deliberately "avx2" and
// not "arch=haswell": virtual CPUs (this project's CI included) may hide flags such as LZCNT, and
// then the resolver rejects the whole Haswell clone and runs the baseline code.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define PBLLM_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define PBLLM_MULTIVERSION
#endif

// Inlined into each clone of a PBLLM_MULTIVERSION caller (a policy object's per-element call).
#if defined(__GNUC__)
#define PBLLM_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define PBLLM_ALWAYS_INLINE inline
#endif
