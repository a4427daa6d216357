#pragma once
// Incremental decoding with a KV cache, one token at a time (generation).
#include "core/kernels/packed_matvec.h"
#include "core/model.h"

#include <memory>

namespace pbllm {

class Decoder {
public:
    virtual ~Decoder() = default;
    /// Feeds `token` at the next position and returns the logits (vocab_size floats) for the token
    /// after it; valid until the next call. Throws Error when the context is full.
    virtual const float* step(int token) = 0;
    /// Forgets the cache; the next step is position 0.
    virtual void reset() = 0;
    virtual int position() const = 0;
    virtual int capacity() const = 0;
};

enum class DecoderBackend {
    Auto,  ///< Cpu for CPU models (float32 or mapped F16/BF16), Torch otherwise
    Cpu,   ///< plain loops over CPU weights (F32, F16 or BF16, read in place by the matvec
           ///< kernels): no per-op dispatch, fastest for batch 1 on CPU
    Torch, ///< libtorch ops on the model's device (CUDA, half precision)
};

/// Approximations the CPU decoder may make for speed; their effect is measured by
/// pbllm bench --suite packed --file (README, "Running from the bits").
struct DecoderOptions {
    /// How the packed kernels read activations (Int8: the 1-bit part in integer SIMD).
    kernels::PackedActivations activations = kernels::PackedActivations::Float32;
    /// The output head as int8 rows with a float scale each (half the bytes of FP16), a copy
    /// the decoder makes.
    bool int8_head = false;
};

/// y = W x for a float32, FP16 or BF16 (rows, cols) CPU tensor read in place, rows split between
/// threads: how the CPU decoder runs unquantized Linears and the head.
void dense_matvec(const at::Tensor& W, const float* x, float* y);

/// A decoder over `model`'s weights (shared, not copied). capacity 0 = the model's context.
std::unique_ptr<Decoder> make_decoder(const Model& model, DecoderBackend backend = DecoderBackend::Auto,
                                      int capacity = 0, const DecoderOptions& options = {});

} // namespace pbllm
