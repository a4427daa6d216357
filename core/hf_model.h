#pragma once
// Hugging Face Llama checkpoints: config.json + model.safetensors, or shards listed in
// model.safetensors.index.json. Tensors F32/F16/BF16, tied or untied head, grouped-query attention.
#include "core/model.h"
#include "core/tokenizer.h"

#include <string>

namespace pbllm {

/// config.json key of synthetic benchmark models (random weights): its value says what they are.
constexpr const char* kSyntheticConfigKey = "pbllm_synthetic";

/// `path` is the model folder, its config.json, a .safetensors file or the shard index.
/// Tensors stay in the file's dtype as views of the memory-mapped files: loading reads headers
/// only, plus one pass over the data for NaN/Inf when `check_finite`. Throws Error naming the
/// file and reason (missing/extra/mis-shaped tensor, bad JSON, NaN...).
Model load_hf(const std::string& path, bool check_finite = true);

struct HfExportOptions {
    bool overwrite = false;        ///< replace an existing non-empty folder's files
    /// Copied in (tokenizer.model, or tokenizer.json and its side files) when set; otherwise the
    /// model's embedded tokenizer (a packed checkpoint's) is written out, when it has one.
    std::string tokenizer_path;
};

/// Writes config.json, model.safetensors (in the model's file dtype) and tokenizer.model into
/// `dir` (created if needed); each file is written atomically. Q/K stay in rotate-half order,
/// which is Hugging Face's own convention.
void save_hf(const Model& model, const std::string& dir, const HfExportOptions& options = {});

/// Creates `dir` if needed and returns its absolute path; Error when it holds files and
/// `overwrite` is false.
std::string prepare_hf_folder(const std::string& dir, bool overwrite);

/// config.json of a model stored in `dtype` (with the synthetic label when given). BOS and EOS
/// (every stop token when there are several) come from `tokenizer` (none: null).
std::string hf_config_json(const ModelConfig& config, at::ScalarType dtype, const std::string& synthetic = {},
                           const Tokenizer* tokenizer = nullptr);

/// True when `path` looks like a Hugging Face model (folder with config.json, .safetensors, index).
bool looks_like_hf(const std::string& path);

} // namespace pbllm
