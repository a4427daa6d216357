#pragma once
// The method registry: one row per quantization method (ARCHITECTURE.md, "Growing core/"). The
// command line, plans, the packed-file reader and the conformance tests find methods here, so a
// new method is its folder under quant/methods plus one row in registry.cpp.
#include "core/gptq.h"
#include "core/quant_config.h"

#include <string>
#include <vector>

namespace pbllm {

struct PackedPayload;
class LayerPreview;
struct PreviewResult;

/// The Tuning page's estimate for one Linear under `settings` (core/preview.h): error and bits of
/// the method on the Linear's sampled rows, with the solver's block size and damping.
using PreviewLinearFn = PreviewResult (*)(LayerPreview& preview, const LayerQuantSettings& settings, int blocksize,
                                          double percdamp);

/// Quantizes one Linear; the arguments as quantize_linear (core/gptq.h) documents them.
using QuantizeLinearFn = QuantizedLinear (*)(const std::string& name, const at::Tensor& W, at::Tensor H,
                                             const LayerQuantSettings& settings, const GptqOptions& options,
                                             double reference_energy);

/// One method: what every front end needs to know of it.
struct MethodInfo {
    QuantMethod id;
    const char* name;    ///< in plans, on the command line and in packed files
    const char* summary; ///< one line for help texts and the studio
    /// How the method's paper counts bits (the "headline" convention of bits_per_weight).
    const char* headline_convention;
    /// The setting keys (core/quant/settings.h) the method reads besides method and skip; others
    /// are ignored, or refused where the setting is strict.
    std::vector<const char*> settings;
    /// Needs a Hessian whatever the saliency metric (error feedback / compensation).
    bool needs_hessian = true;
    /// Post-training quantizer; null for a training method (qat runs through pbllm qat).
    QuantizeLinearFn quantize = nullptr;
    /// How its Linears are stored in a packed checkpoint (core/quant/payload.h).
    const PackedPayload& (*payload)() = nullptr;
    BlockBinaryLayout block_layout{}; ///< the preset of its codes (block-binary payload only)
    PreviewLinearFn preview = nullptr;
    /// Every weight on the grid (`bits`), none binarized: no salient share to report.
    bool plain_grid = false;

    /// Stored as block-binarized codes (BlockBinaryCodes) rather than PB-LLM's layout.
    bool block_binary() const;
    /// Whether the method reads the setting `key` (method and skip: every method).
    bool reads(const std::string& key) const;
};

/// Every method, in the order help texts list them.
const std::vector<MethodInfo>& methods();
const MethodInfo& method_info(QuantMethod id);
/// The row named `name`, or nullptr.
const MethodInfo* find_method(const std::string& name);
/// "pb-gptq, rtn, gptq, ..." (post_training_only: only those quantize_linear runs).
std::string method_names(bool post_training_only = false);
/// True when `id` stores BlockBinaryCodes (billm, arb): its own payload, kernels and checks.
bool stores_block_binary(QuantMethod id);
/// The codes' layout of a block-binary method: its preset, or as `options` set it.
BlockBinaryLayout block_layout_of(QuantMethod id);
BlockBinaryLayout block_layout_of(QuantMethod id, const BlockBinaryOptions& options);

/// An upper bound of the stored bits per weight of a Linear quantized with `s` (its payload's):
/// what the streamed quantizer plans its memory with.
double stored_bits_bound(const LayerQuantSettings& s, std::int64_t rows, std::int64_t cols, int blocksize, int groupsize);

/// `s` switched to method `id`: strict settings (core/quant/settings.h) that `id` does not read go
/// back to their defaults (a plan switched from arb-rc to arb must not keep 8-bit scales).
LayerQuantSettings with_method(LayerQuantSettings s, QuantMethod id);

} // namespace pbllm
