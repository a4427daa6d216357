#include "core/quant/registry.h"

#include "core/error.h"
#include "core/preview.h"
#include "core/quant/methods/billm/billm.h"
#include "core/quant/methods/gptq/gptq_solver.h"
#include "core/quant/payload.h"
#include "core/quant/settings.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace pbllm {

const std::vector<MethodInfo>& methods()
{
    // One row per method. The order is the order of help texts and the studio's lists.
    static const std::vector<MethodInfo> table = {
        {QuantMethod::PbGptq, "pb-gptq",
         "PB-LLM: a salient share at salient_bits, the rest binarized, with GPTQ error feedback",
         "salient_bits * r + (1 - r), r = salient share (PB-LLM)",
         {"salient_ratio", "salient_bits", "metric", "binarizer"}, true, quantize_gptq_family, partial_binary_payload,
         {}, partial_binary_preview},
        {QuantMethod::Rtn, "rtn", "PB-LLM's quantizers without error feedback (round to nearest)",
         "salient_bits * r + (1 - r), r = salient share (PB-LLM)",
         {"salient_ratio", "salient_bits", "metric", "binarizer"}, false, quantize_gptq_family, partial_binary_payload,
         {}, partial_binary_preview},
        {QuantMethod::Gptq, "gptq", "plain GPTQ: every weight on a `bits` grid (baseline)", "bits", {"bits"}, true,
         quantize_gptq_family, partial_binary_payload, {}, plain_grid_preview, /*plain_grid=*/true},
        {QuantMethod::Qat, "qat", "PB-LLM learned by quantization-aware training (pbllm qat), stored like pb-gptq",
         "salient_bits * r + (1 - r), r = salient share (PB-LLM)", {"salient_ratio", "salient_bits", "binarizer"},
         false, nullptr, partial_binary_payload, {}, partial_binary_preview},
        {QuantMethod::Billm, "billm",
         "BiLLM: salient columns residual-binarized, the rest split at a searched break point, block compensation",
         "2 r + (1 - r), r = salient column share (BiLLM; bitmaps and FP16 row parameters not counted)",
         {"metric", "billm_search", "billm_compensation", "cgb"}, true, quantize_billm, block_binary_payload, {},
         block_binary_preview},
        {QuantMethod::Arb, "arb",
         "ARB-LLM's alternating refined binarization (15 iterations of mean, scale and signs per group, both "
         "orders) in BiLLM's pipeline; stored like billm",
         "2 r + (1 - r), r = salient column share (as BiLLM)", {"metric", "billm_search", "billm_compensation", "cgb"},
         true, quantize_billm, block_binary_payload, {}, block_binary_preview},
        {QuantMethod::ArbX, "arb-x",
         "ARB-LLM_X: ARB, then 15 rounds of its means and scales in the metric of the block's Hessian, the "
         "break point scored by tr(R S R^T); salient columns split by the group bitmap too (CGB)",
         "2 r + (1 - r), r = salient column share (as BiLLM)", {"metric", "billm_search", "billm_compensation", "cgb"},
         true, quantize_billm, block_binary_payload, BlockBinaryLayout{true, false}, block_binary_preview},
        {QuantMethod::ArbRc, "arb-rc",
         "ARB-LLM_RC: a row scale and a column scale per order and group, no means, 15 alternating rounds; "
         "salient columns split by the group bitmap too (CGB)",
         "2 r + (1 - r), r = salient column share (as BiLLM)",
         {"metric", "billm_search", "billm_compensation", "cgb", "scale_format"}, true, quantize_billm,
         block_binary_payload, BlockBinaryLayout{true, true}, block_binary_preview},
    };
    return table;
}

const MethodInfo& method_info(QuantMethod id)
{
    for (const MethodInfo& m : methods())
        if (m.id == id)
            return m;
    throw Error("unknown quantization method id " + std::to_string(static_cast<int>(id)));
}

const MethodInfo* find_method(const std::string& name)
{
    for (const MethodInfo& m : methods())
        if (name == m.name)
            return &m;
    return nullptr;
}

std::string method_names(bool post_training_only)
{
    std::string names;
    for (const MethodInfo& m : methods()) {
        if (post_training_only && !m.quantize)
            continue;
        names += (names.empty() ? "" : ", ") + std::string(m.name);
    }
    return names;
}

bool MethodInfo::block_binary() const { return payload == block_binary_payload; }

bool stores_block_binary(QuantMethod id) { return method_info(id).block_binary(); }

BlockBinaryLayout block_layout_of(QuantMethod id) { return method_info(id).block_layout; }

BlockBinaryLayout block_layout_of(QuantMethod id, const BlockBinaryOptions& options)
{
    BlockBinaryLayout layout = block_layout_of(id);
    if (options.cgb != CgbChoice::Preset)
        layout.split_salient = options.cgb == CgbChoice::On;
    layout.log8_scales = options.scale_format == ScaleFormat::Log8;
    return layout;
}

double stored_bits_bound(const LayerQuantSettings& s, std::int64_t rows, std::int64_t cols, int blocksize, int groupsize)
{
    return method_info(s.method).payload().stored_bits_bound(s, rows, cols, blocksize, groupsize);
}

LayerQuantSettings with_method(LayerQuantSettings s, QuantMethod id)
{
    s.method = id;
    const MethodInfo& m = method_info(id);
    for (const SettingInfo& info : layer_settings())
        if (info.strict && !m.reads(info.key))
            info.copy(LayerQuantSettings{}, s);
    return s;
}

bool MethodInfo::reads(const std::string& key) const
{
    return key == "method" || key == "skip" ||
           std::any_of(settings.begin(), settings.end(), [&](const char* k) { return key == k; });
}

QuantizedLinear quantize_linear(const std::string& name, const at::Tensor& W, at::Tensor H,
                                const LayerQuantSettings& settings, const GptqOptions& options,
                                double reference_energy)
{
    // What every method needs of its inputs, checked once here.
    if (W.dim() != 2)
        throw Error(name + ": a Linear weight must be 2-D");
    const std::int64_t cols = W.size(1);
    if (!at::isfinite(W).all().item<bool>())
        throw Error(name + ": weights contain NaN/Inf; refusing to quantize");
    if (H.defined() && (H.dim() != 2 || H.size(0) != cols || H.size(1) != cols))
        throw Error(name + ": Hessian shape does not match the weight's " + std::to_string(cols) + " input features");
    validate_for_method(settings, name + ": ");
    const MethodInfo& m = method_info(settings.method);
    if (!m.quantize)
        throw Error(name + ": " + m.name + " is a training method, not a post-training quantizer (use pbllm " + m.name +
                    ")");
    return m.quantize(name, W, std::move(H), settings, options, reference_energy);
}

} // namespace pbllm
