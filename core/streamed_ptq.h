#pragma once
// Quantization of models larger than memory, straight into a packed checkpoint: one decoder layer
// in float32 at a time (the model may stay mapped in F16/BF16), each finished layer written to
// disk at once, and a run killed at any point resumable to the very file an uninterrupted run
// writes.
//
// While it runs, OUT.partial/ beside the output holds:
//   state.json        fingerprints (program, model, plan, calibration), creation time, layers done
//   layer-NNNN.h5     the packed Linears of each finished decoder layer, with their reports
//   head.h5           the quantized head (quantize_head)
//   stream-NNNN.bin   the calibration residual stream entering layer NNNN (float32)
// Every file is written to a temporary and renamed, state.json last, so at any instant the
// folder describes a consistent point to resume from. The output itself appears only at the end,
// assembled from the layer files by one atomic rename; the folder is then removed.
#include "core/model.h"
#include "core/packed_checkpoint.h"
#include "core/progress.h"
#include "core/quant_config.h"

#include <functional>
#include <string>
#include <vector>

namespace pbllm {

/// One quantized Linear of the result, without its arrays.
struct LinearReport {
    std::string name;
    std::int64_t rows = 0, cols = 0;
    double salient_ratio = 0.0, weight_error = 0.0, output_error = -1.0, seconds = 0.0;
    std::string note;
    std::string index_encoding;
    LinearBits bits;
};

/// One decoder layer's step (layer == n_layers is the head).
struct LayerReport {
    int layer = 0;
    double seconds = 0.0;        ///< wall time (0 when it was done by an earlier, interrupted run)
    double gflop = 0.0;          ///< LayerwiseQuantizer::layer_flops() / 1e9
    bool resumed = false;        ///< done by an earlier run
    std::int64_t resident_bytes = -1; ///< VmRSS when it finished
    std::int64_t peak_anonymous_bytes = -1; ///< the most anonymous memory during it (sampled)
    /// Where the time went: the forward pass with Hessian accumulation, the quantizers (every
    /// Linear), the forward pass of the quantized layer.
    double hessian_seconds = 0.0, quantize_seconds = 0.0, output_seconds = 0.0;
};

struct QuantizeToFileOptions {
    std::string output;          ///< OUT.pbllm.h5
    bool resume = false;         ///< continue OUT.partial (refused when any fingerprint differs)
    bool overwrite = false;      ///< replace an existing output / discard an existing OUT.partial
    std::string model_fingerprint;       ///< model_fingerprint() of the source
    PackedHeader header;         ///< source_sha256, calibration_sha256, tokenizer: stored in the file
    std::function<void(const LayerReport&)> layer_done; ///< after each layer, resumed ones included
};

struct QuantizeToFileResult {
    std::vector<LinearReport> linears; ///< in file order
    std::vector<LayerReport> layers;
    BitsPerWeight bits;
    double salient_ratio = 0.0;        ///< salient / quantized weights (plain GPTQ Linears excluded)
    std::int64_t quantized_weights = 0;
    std::int64_t file_bytes = 0;
    double seconds = 0.0;              ///< this run's wall time
    int resumed_layers = 0;
    std::int64_t peak_resident_bytes = -1; ///< VmHWM of the process at the end (model pages included)
    /// The most anonymous memory (sampled) from the first layer to the end: what the working
    /// memory plan, working_bytes, is to cover.
    std::int64_t peak_anonymous_bytes = -1;
    std::int64_t working_bytes = 0;    ///< the estimate the run was planned with
};

/// "OUT.pbllm.h5.partial": where quantize_to_file keeps an unfinished run of `output`.
std::string partial_folder(const std::string& output);

/// Quantizes `model` (any storage; F16/BF16 mapped models are read one layer at a time) with
/// `plan` over `windows` and writes the packed checkpoint options.output, layer by layer as
/// described above. The result is identical, byte for byte, to that of write_packed_checkpoint
/// (quantize_model(...)) given the same creation time. Progress stages read "layer 17/32,
/// down_proj". Refuses before starting, with figures, when the working memory would not fit.
/// Errors name the file or the differing fingerprint; cancelling throws Cancelled and keeps
/// OUT.partial for --resume.
QuantizeToFileResult quantize_to_file(const Model& model, const std::vector<std::vector<int>>& windows,
                                      const QuantPlan& plan, const QuantizeToFileOptions& options,
                                      const ProgressFn& progress = {});

/// What identifies a model's weights for --resume: SHA-256 over its files' names and
/// sampled_sha256_of_file (a folder: config.json and every *.safetensors).
std::string model_fingerprint(const Model& model);
/// SHA-256 of the windows' token ids.
std::string windows_sha256(const std::vector<std::vector<int>>& windows);

} // namespace pbllm
