#pragma once
// The value structs workers hand to the GUI: computed once on a worker thread, then shared
// read-only (std::shared_ptr<const T>). No libtorch headers here, so widgets compile fast.
#include "core/quant_config.h"
#include "core/system.h"

#include <QMetaType>
#include <QString>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace pbllm {

/// human_bytes as a QString, for labels and log lines.
inline QString human_size(std::int64_t bytes) { return QString::fromStdString(human_bytes(bytes)); }

struct Model;
class Tokenizer;
struct CalibrationData;
struct QuantizedModel;

/// A histogram over [lo, hi] in equal bins.
struct Bins {
    double lo = 0.0, hi = 0.0;
    std::vector<double> counts;
};

/// One quantizable Linear of the loaded model, in quantization order.
struct LinearInfo {
    int layer = 0;            ///< decoder block
    QString name;             ///< "model.layers.3.self_attn.q_proj"
    QString kind;             ///< "q_proj"
    std::int64_t rows = 0, cols = 0;
    std::int64_t weight_count() const { return rows * cols; }
};

/// Weight statistics of one Linear, computed on demand (LinearStatsService): opening a model
/// reads no weight data, so a 7B folder opens in seconds.
struct LinearStats {
    double mean = 0.0, std = 0.0, abs_max = 0.0, kurtosis = 0.0, outlier_fraction = 0.0;
    std::int64_t nonfinite = 0; ///< NaN/Inf weights (a mapped model is opened without a full scan)
    Bins weights;               ///< histogram of W
    double seconds = 0.0;       ///< what computing them took
    QString error;              ///< why they could not be computed ("" when they were)
};

struct LoadedModel {
    std::shared_ptr<const Model> model;
    std::shared_ptr<const Tokenizer> tokenizer;
    QString path;
    QString display_name;
    std::vector<std::pair<QString, QString>> summary; ///< label, value: what the Model page lists
    std::vector<LinearInfo> linears;
    int n_layers = 0;
    int context = 0;
    std::int64_t parameters = 0;
    std::int64_t quantizable_weights = 0; ///< weights of the Linears above
    std::int64_t fp16_bytes = 0;          ///< the whole model stored as FP16: the size to compare with
    double load_seconds = 0.0;
    bool mapped = false; ///< weights memory-mapped in the file's precision (big models), not float32 copies
    bool packed = false; ///< a packed checkpoint whose quantized Linears run from their bits
};

struct CalibrationResult {
    std::shared_ptr<const CalibrationData> data;
    std::vector<double> hessian_trace; ///< per LinearInfo, tr H of its input
    QString source;                    ///< the text or the calibration file it came from
    int windows = 0, seqlen = 0;
    std::int64_t tokens = 0;
    double seconds = 0.0;
};

/// Slider preview of one Linear at its current settings.
struct LinearPreview {
    int linear = 0;                 ///< index into LoadedModel::linears
    double salient_ratio = 0.0;     ///< achieved
    double threshold = 0.0;         ///< saliency score threshold
    double weight_error = 0.0;      ///< relative Frobenius
    double hessian_error = -1.0;    ///< Hessian-diagonal-weighted relative error; -1 uncalibrated
    int salient_bits = 8;
    std::int64_t estimated_bytes = 0;
};

struct PreviewSnapshot {
    std::uint64_t id = 0;
    std::vector<LinearPreview> linears;
    double headline_bits = 0.0, bitmap_bits = 0.0, index_bits = 0.0, estimated_bits = 0.0;
    std::int64_t estimated_file_bytes = 0; ///< quantized Linears + FP16 rest + container overhead
    double milliseconds = 0.0;
    /// Share of the weights the figures come from: 1 = every row (exact), below 1 = estimates
    /// from evenly spaced rows of each Linear (big models while the slider moves).
    double sampled_fraction = 1.0;
    bool exact() const { return sampled_fraction >= 1.0; }
};

struct BitsSummary {
    double headline = 0.0, with_bitmap = 0.0, with_index = 0.0, measured = 0.0;
};

/// Outcome of a PTQ or QAT run.
struct RunResult {
    std::shared_ptr<const QuantizedModel> quantized;
    std::shared_ptr<const Model> model; ///< the result run from its bits (packed Linears, as exported)
    QString method;
    BitsSummary bits;
    double salient_ratio = 0.0;
    double ppl_before = 0.0, ppl_after = 0.0; ///< 0 when not evaluated
    int eval_windows = 0;
    double seconds = 0.0;
};

struct ExportResult {
    QString path;
    QString hf_dir;                     ///< "" when no dequantized copy was written
    std::int64_t file_bytes = 0;
    BitsSummary bits;
    double compression_vs_fp16 = 0.0;   ///< FP16 bytes / file bytes
};

struct GenerationOutcome {
    QString text;                 ///< completion only
    std::vector<int> prompt_tokens;
    std::vector<int> tokens;
    double tokens_per_second = 0.0;
    double seconds = 0.0;
    std::int64_t memory_bytes = 0; ///< weights in memory + KV cache
    bool cancelled = false;
};

/// Perplexity of a model on a text (EVALUATION.md protocol, first windows).
struct EvaluationOutcome {
    double ppl = 0.0;
    int windows = 0, seqlen = 0;
    double tokens_per_second = 0.0;
    double seconds = 0.0;
};

/// QAT progress for the live loss curve.
struct TrainingStep {
    int step = 0, steps = 0;
    double loss = 0.0;
    double eval_ppl = 0.0; ///< 0 when not evaluated at this step
};

} // namespace pbllm

Q_DECLARE_METATYPE(std::shared_ptr<const pbllm::LoadedModel>)
Q_DECLARE_METATYPE(std::shared_ptr<const pbllm::CalibrationResult>)
Q_DECLARE_METATYPE(std::shared_ptr<const pbllm::RunResult>)
Q_DECLARE_METATYPE(pbllm::PreviewSnapshot)
Q_DECLARE_METATYPE(pbllm::LinearStats)
Q_DECLARE_METATYPE(pbllm::ExportResult)
Q_DECLARE_METATYPE(pbllm::GenerationOutcome)
Q_DECLARE_METATYPE(pbllm::TrainingStep)
Q_DECLARE_METATYPE(pbllm::EvaluationOutcome)
