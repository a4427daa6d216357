#pragma once
// The studio's long jobs, each a Job with one typed result signal. Inputs are shared read-only
// (the loaded model is never modified: quantization makes a new model), so cancelling any job
// leaves the session exactly as it was.
#include "workers/job.h"
#include "workers/results.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace pbllm {

struct QatSettings;
struct ModelConfig;
enum class ModelFormat;

/// How the studio holds a model's weights on the CPU.
enum class StudioStorage {
    Auto,    ///< mapped when a Hugging Face model's float32 copy would pass kStudioMapAboveBytes
    Float32, ///< float32 copies (every studio job works on them)
    Mapped,  ///< the file's F16/BF16/F32 data mapped (Hugging Face folders; other formats are float32)
};
/// 1 GiB of float32 weights (about 270M parameters): stories110M stays float32, TinyLlama-1.1B
/// and larger open mapped.
constexpr std::int64_t kStudioMapAboveBytes = std::int64_t(1) << 30;
/// A loaded calibration keeps its Hessians in memory up to this size (float64, all layers);
/// past it they stay in the file and each is read when a Linear needs it.
constexpr std::int64_t kStudioHessiansInMemoryBytes = std::int64_t(1) << 30;
bool studio_maps_weights(const ModelConfig& config, ModelFormat format, StudioStorage choice);

/// Opens a model file or folder (llama2.c, Hugging Face, .pbllm.h5) with its tokenizer: shapes
/// and the summary only (weight statistics are LinearStatsService's), in seconds for 7B.
class LoadModelJob : public Job {
    Q_OBJECT
public:
    using Job::Job;
    /// `device`: "cpu" or "cuda[:N]" (an error when libtorch has no CUDA).
    bool start(const QString& path, const QString& device = QStringLiteral("cpu"),
               StudioStorage storage = StudioStorage::Auto);
Q_SIGNALS:
    void loaded(std::shared_ptr<const pbllm::LoadedModel> model);
};

/// Hessians of every Linear's input from calibration text (or a saved calibration file).
class CalibrateJob : public Job {
    Q_OBJECT
public:
    using Job::Job;
    /// Samples `nsamples` windows of `seqlen` tokens (0 = context) of the text file with `seed`.
    bool start(std::shared_ptr<const LoadedModel> model, const QString& text_path, int nsamples, int seqlen,
               std::uint64_t seed);
    /// Reads a calibration file written by save() or `pbllm calibrate`.
    bool startLoad(std::shared_ptr<const LoadedModel> model, const QString& calibration_path);
    /// Writes `result` (atomically) for startLoad or `pbllm quantize --calib`.
    static void save(const LoadedModel& model, const CalibrationResult& result, const QString& path);
Q_SIGNALS:
    void calibrated(std::shared_ptr<const pbllm::CalibrationResult> result);
};

struct RunRequest {
    QuantPlan plan;
    QString calibration_text; ///< windows are sampled from it with plan.config (nsamples, seqlen, seed)
    QString eval_text;        ///< "" = no perplexity
    int eval_windows = 0;     ///< 0 = all windows ("full"), else the first N ("quick")
    // QAT only
    bool qat = false;
    int qat_steps = 100;
    double qat_lr = 1e-4;
    double qat_kd = 0.0;
};

/// PTQ (PB-GPTQ, RTN, GPTQ by the plan's method) or QAT, then perplexity before and after.
class QuantizeJob : public Job {
    Q_OBJECT
public:
    using Job::Job;
    bool start(std::shared_ptr<const LoadedModel> model, const RunRequest& request);
Q_SIGNALS:
    void trainingStep(const pbllm::TrainingStep& step);
    void quantized(std::shared_ptr<const pbllm::RunResult> result);
};

/// Writes the packed .pbllm.h5 (and optionally a dequantized Hugging Face folder). Refuses to
/// replace an existing file unless `overwrite`.
class ExportJob : public Job {
    Q_OBJECT
public:
    using Job::Job;
    bool start(std::shared_ptr<const RunResult> result, const LoadedModel& source, const QString& path,
               bool overwrite, const QString& hf_dir = {});
Q_SIGNALS:
    void exported(const pbllm::ExportResult& result);
};

struct SamplerChoice {
    float temperature = 0.0f; ///< 0 = greedy
    float top_p = 0.9f;
    std::uint64_t seed = 0;
    int max_new_tokens = 128;
};

/// Streams a generation token by token.
class GenerateJob : public Job {
    Q_OBJECT
public:
    using Job::Job;
    bool start(std::shared_ptr<const Model> model, std::shared_ptr<const Tokenizer> tokenizer, const QString& prompt,
               const SamplerChoice& sampler);
Q_SIGNALS:
    void token(const QString& piece);
    void generated(const pbllm::GenerationOutcome& outcome);
};

/// Perplexity of `model` on the text file's first `windows` windows of its context (all when 0).
class EvaluateJob : public Job {
    Q_OBJECT
public:
    using Job::Job;
    bool start(std::shared_ptr<const Model> model, std::shared_ptr<const Tokenizer> tokenizer, const QString& text_path,
               int windows);
Q_SIGNALS:
    void evaluated(const pbllm::EvaluationOutcome& outcome);
};

/// Mean NLL (nats/token) the reference model assigns to `tokens` after `prompt_tokens`.
class ScoreJob : public Job {
    Q_OBJECT
public:
    using Job::Job;
    bool start(std::shared_ptr<const Model> reference, std::vector<int> prompt_tokens, std::vector<int> tokens);
Q_SIGNALS:
    void scored(double mean_nll);
};

} // namespace pbllm
