#pragma once
// One front door for models: format detection, device placement, tokenizer discovery, and the
// default model (stories260K) lookup.
#include "core/model.h"
#include "core/progress.h"
#include "core/tokenizer.h"

#include <c10/core/Device.h>

#include <string>
#include <vector>

namespace pbllm {

/// How a loaded model holds its weights on the CPU.
enum class WeightStorage {
    Float32, ///< converted to float32 in memory: what quantization, QAT and the studio use today
    Mapped,  ///< the file's own F16/BF16/F32 data, memory-mapped where the format allows
             ///< (safetensors; other formats are float32 in memory): opening reads headers only,
             ///< the batched forward converts one decoder layer at a time and the CPU decoder
             ///< reads F16/BF16 directly, so models larger than the free memory run
};

struct LoadOptions {
    std::string tokenizer_path; ///< explicit SentencePiece model; "" = look beside the model
    c10::Device device = c10::Device(c10::kCPU);
    WeightStorage storage = WeightStorage::Float32;
    bool check_finite = true; ///< refuse NaN/Inf weights (one pass over the data)
    /// Packed checkpoints on the CPU: keep quantized Linears packed and run them with the packed
    /// kernels (generation, evaluation); off = dequantize them to float32 (what quantization,
    /// QAT and weight statistics need).
    bool packed = false;
};

/// Loads a llama2.c checkpoint, a Hugging Face folder/file or a .pbllm.h5 packed checkpoint.
/// On CPU tensors are float32 or mapped (options.storage); on CUDA float16 (bfloat16 when the
/// file stored bfloat16). A float32 model that would not fit the available memory is refused.
Model load_model(const std::string& path, const LoadOptions& options = {});

/// The same model with every CPU tensor copied into anonymous memory, backed by transparent huge
/// pages where the kernel allows (file dtype kept). Batch-1 decoding streams every weight once
/// per token: through 4 KiB page-cache mappings of a 2 GB model this machine read 2-15 GB/s
/// (page walks), from huge pages 21 GB/s. Throws Error (memory) when it would not fit.
Model resident_copy(const Model& model);

/// Where a model was found.
struct ModelLocation {
    std::string model_path;
    std::string tokenizer_path;
    std::string how; ///< "PBLLM_MODEL", "shared folder", "user data folder", "downloaded"
};

/// Where the default model is looked for, in order, and where it comes from otherwise.
struct DefaultModelSearch {
    std::string user_path;                ///< a model the user named ($PBLLM_MODEL); wins when set
    std::vector<std::string> shared_dirs; ///< folders holding models/stories260K
    std::string user_dir;                 ///< the user data folder for stories260K (download target)
    std::string url;                      ///< base URL of stories260K.bin, tok512.bin, tok512.model
};

/// The standard search: $PBLLM_MODEL; $PBLLM_SHARED_DIR, ../shared beside the working directory
/// and beside the source tree; ($XDG_DATA_HOME or ~/.local/share)/pbllm/models/stories260K;
/// $PBLLM_MODEL_URL or the karpathy/tinyllamas Hugging Face repository.
DefaultModelSearch default_model_search();

/// The default model, stories260K with its tok512 tokenizer, found by `search`. If absent
/// everywhere it is downloaded into search.user_dir with curl and verified (SHA-256 of
/// stories260K.bin and tok512.bin, and tok512.model's scores against tok512.bin). Throws Error
/// saying where to put the files when that fails (for instance without network).
ModelLocation locate_default_model(const DefaultModelSearch& search, const ProgressFn& progress = {});
ModelLocation locate_default_model(const ProgressFn& progress = {});

/// SHA-256 of the published stories260K.bin (checked after a download).
constexpr const char* kStories260kSha256 = "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696";
/// SHA-256 of tok512.bin, llama2.c's form of the same vocabulary (used to verify tok512.model).
constexpr const char* kTok512BinSha256 = "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312";

/// The tokenizer of a loaded model: the SentencePiece file found beside it, else the one embedded
/// in a packed checkpoint. Error when there is none or its vocabulary disagrees with the model.
Tokenizer tokenizer_for(const Model& model);

} // namespace pbllm
