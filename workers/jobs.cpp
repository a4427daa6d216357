#include "workers/jobs.h"

#include "core/architecture.h"
#include "core/calibration.h"
#include "core/calibration_file.h"
#include "core/error.h"
#include "core/evaluation.h"
#include "core/generation.h"
#include "core/hf_model.h"
#include "core/model_io.h"
#include "core/packed_checkpoint.h"
#include "core/packed_runtime.h"
#include "core/ptq.h"
#include "core/qat.h"
#include "core/saliency.h"
#include "core/system.h"
#include "core/tensor_stats.h"
#include "core/tokenizer.h"

#include <ATen/ATen.h>

#include <QFileInfo>
#include <QPointer>

#include <chrono>

namespace pbllm {

namespace {

double seconds_since(std::chrono::steady_clock::time_point start)
{
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::shared_ptr<LoadedModel> describe(Model loaded, Tokenizer tokenizer, const QString& path, double seconds, bool mapped)
{
    auto out = std::make_shared<LoadedModel>();
    const ModelConfig& c = loaded.config;
    out->path = path;
    out->display_name = QFileInfo(path).fileName();
    out->n_layers = c.n_layers;
    out->context = c.usable_context();
    out->parameters = c.parameter_count();
    out->fp16_bytes = 2 * out->parameters;
    out->load_seconds = seconds;
    out->mapped = mapped;
    // Shapes only: the statistics are LinearStatsService's, on demand.
    for (int l = 0; l < c.n_layers; ++l)
        for (LinearKind kind : kAllLinearKinds) {
            const kernels::PackedWeights* packed = loaded.layers[l].packed_weight(kind);
            const at::Tensor& w = loaded.layers[l].weight(kind);
            LinearInfo info;
            info.layer = l;
            info.name = QString::fromStdString(linear_name(l, kind));
            info.kind = QString::fromUtf8(linear_short_name(kind).data(), static_cast<int>(linear_short_name(kind).size()));
            info.rows = packed ? packed->rows : w.size(0);
            info.cols = packed ? packed->cols : w.size(1);
            out->quantizable_weights += info.weight_count();
            out->linears.push_back(std::move(info));
        }
    const QString arch = QStringLiteral("%9: %1 layers, dim %2, hidden %3, %4 heads (%5 KV), vocab %6, context %7%8")
                             .arg(c.n_layers).arg(c.dim).arg(c.hidden_dim).arg(c.n_heads).arg(c.n_kv_heads)
                             .arg(c.vocab_size).arg(c.max_seq_len).arg(c.tied_embeddings ? ", tied head" : "")
                             .arg(QString::fromStdString(architecture_details(c)));
    const std::int64_t embedding = static_cast<std::int64_t>(c.vocab_size) * c.dim;
    out->summary = {
        {QStringLiteral("File"), path},
        {QStringLiteral("Format"), QString::fromUtf8(to_string(loaded.format).data(), static_cast<int>(to_string(loaded.format).size()))},
        {QStringLiteral("Architecture"), arch},
        {QStringLiteral("Parameters"), QStringLiteral("%L1 (Linears %L2, embedding %L3)").arg(out->parameters).arg(out->quantizable_weights).arg(embedding)},
        {QStringLiteral("Stored as"), QString::fromStdString(loaded.file_dtype) +
                                          (loaded.has_packed_linears()
                                               ? QStringLiteral(", quantized Linears run from their bits (%1 of weights in memory)")
                                                     .arg(human_size(resident_weight_bytes(loaded)))
                                           : mapped ? QStringLiteral(", memory-mapped (weights read when used)")
                                                    : QStringLiteral(", float32 in memory"))},
        {QStringLiteral("File size"), human_size(loaded.file_bytes) + QStringLiteral(" (FP16 would be %1)").arg(human_size(out->fp16_bytes))},
        {QStringLiteral("Tokenizer"), QStringLiteral("%1 (%2 pieces)").arg(QString::fromStdString(tokenizer.origin())).arg(tokenizer.vocab_size())},
        {QStringLiteral("Loaded in"), QStringLiteral("%1 s").arg(seconds, 0, 'f', 2)},
    };
    out->model = std::make_shared<const Model>(std::move(loaded));
    out->tokenizer = std::make_shared<const Tokenizer>(std::move(tokenizer));
    return out;
}

std::vector<int> tokens_of_file(const LoadedModel& model, const QString& path)
{
    return model.tokenizer->encode(read_text_file(path.toStdString()));
}

std::shared_ptr<CalibrationResult> summarize(const LoadedModel& model, CalibrationData data, const QString& source,
                                             double seconds)
{
    auto out = std::make_shared<CalibrationResult>();
    out->source = source;
    out->windows = static_cast<int>(data.windows.size());
    out->seqlen = data.seqlen;
    out->tokens = data.tokens();
    out->seconds = seconds;
    for (const LinearInfo& info : model.linears) {
        const LinearKind kind = kAllLinearKinds[static_cast<std::size_t>(&info - model.linears.data()) % kLinearKindCount];
        out->hessian_trace.push_back(
            data.hessian_traces[static_cast<std::size_t>(info.layer)][static_cast<std::size_t>(input_of(kind))]);
    }
    out->data = std::make_shared<const CalibrationData>(std::move(data));
    return out;
}

BitsSummary summary_of(const BitsPerWeight& b) { return {b.headline, b.with_bitmap, b.with_index, b.measured}; }

BitsSummary packed_bits(const QuantizedModel& q)
{
    std::vector<PackedLinear> packed;
    for (const QuantizedLinear& l : q.linears)
        packed.push_back(pack_linear(l));
    return summary_of(bits_per_weight(packed));
}

/// Model-page lines of a packed checkpoint: how it was quantized and what it costs.
std::vector<std::pair<QString, QString>> packed_summary(const PackedCheckpoint& ck)
{
    const QuantConfig& c = ck.quantized.plan.config;
    std::int64_t weights = 0, salient = 0;
    for (const LinearBits& b : ck.bits) {
        weights += b.weights;
        salient += b.salient_count;
    }
    const BitsPerWeight bits = bits_per_weight(ck.bits);
    std::vector<std::pair<QString, QString>> lines = {
        {QStringLiteral("Quantized"),
         QStringLiteral("%1, %2 Linears, salient %3% (asked %4%) at %5 bits")
             .arg(QString::fromStdString(to_string(c.layer.method)))
             .arg(ck.bits.size())
             .arg(weights > 0 ? 100.0 * static_cast<double>(salient) / static_cast<double>(weights) : 0.0, 0, 'f', 2)
             .arg(100.0 * c.layer.salient_ratio, 0, 'f', 1)
             .arg(c.layer.salient_bits)},
        {QStringLiteral("Bits per weight"),
         QStringLiteral("%1 in the file (headline %2, with index %3)")
             .arg(bits.measured, 0, 'f', 3).arg(bits.headline, 0, 'f', 3).arg(bits.with_index, 0, 'f', 3)},
    };
    if (!ck.quantized.training_json.empty())
        lines.push_back({QStringLiteral("Training"), QString::fromStdString(ck.quantized.training_json)});
    for (const std::string& note : ck.quantized.model.notes)
        lines.push_back({QStringLiteral("Note"), QString::fromStdString(note)});
    return lines;
}

} // namespace

bool studio_maps_weights(const ModelConfig& config, ModelFormat format, StudioStorage choice)
{
    if (choice != StudioStorage::Auto)
        return choice == StudioStorage::Mapped && format == ModelFormat::HuggingFace;
    return format == ModelFormat::HuggingFace && config.parameter_count() * 4 > kStudioMapAboveBytes;
}

bool LoadModelJob::start(const QString& path, const QString& device, StudioStorage storage)
{
    auto result = std::make_shared<std::shared_ptr<LoadedModel>>();
    return launch(
        [path, device, storage, result](const ProgressFn& progress) {
            const auto start = std::chrono::steady_clock::now();
            report_progress(progress, 0.0, "loading " + path.toStdString());
            LoadOptions options;
            options.device = c10::Device(device.toStdString());
            if (options.device.is_cuda() && !cuda_available())
                throw Error("device " + device.toStdString() + ": this build's libtorch has no CUDA (or no GPU is visible)");
            // Headers first: a big Hugging Face model stays mapped in its file's precision, and
            // its NaN/Inf scan is left to the statistics pass (a 7B scan reads 12.6 GB).
            options.storage = WeightStorage::Mapped;
            options.check_finite = false;
            if (options.device.is_cpu() && has_hdf5_signature(path.toStdString())) {
                // A packed checkpoint runs from its bits: what it is and costs joins the summary.
                PackedCheckpoint ck = read_packed_checkpoint(path.toStdString(), PackedLoad::Runtime);
                ck.quantized.model.tokenizer_path = find_tokenizer_beside(path.toStdString()); // as load_model
                report_progress(progress, 0.8, "loading the tokenizer");
                Tokenizer tok = tokenizer_for(ck.quantized.model);
                const auto lines = packed_summary(ck);
                auto loaded = describe(std::move(ck.quantized.model), std::move(tok), path, seconds_since(start), false);
                loaded->summary.insert(loaded->summary.end(), lines.begin(), lines.end());
                loaded->packed = true;
                *result = loaded;
                report_progress(progress, 1.0, "loaded");
                return;
            }
            Model m = load_model(path.toStdString(), options);
            const bool mapped = options.device.is_cpu() && studio_maps_weights(m.config, m.format, storage);
            if (options.device.is_cpu() && !mapped && m.format == ModelFormat::HuggingFace) {
                report_progress(progress, 0.3, "converting to float32");
                options.storage = WeightStorage::Float32;
                options.check_finite = true;
                m = load_model(path.toStdString(), options);
            } else if (!mapped) {
                m.check_finite();
            }
            report_progress(progress, 0.8, "loading the tokenizer");
            Tokenizer tok = tokenizer_for(m);
            *result = describe(std::move(m), std::move(tok), path, seconds_since(start), mapped);
            report_progress(progress, 1.0, "loaded");
        },
        [this, result] { Q_EMIT loaded(*result); });
}

bool CalibrateJob::start(std::shared_ptr<const LoadedModel> model, const QString& text_path, int nsamples, int seqlen,
                         std::uint64_t seed)
{
    auto result = std::make_shared<std::shared_ptr<CalibrationResult>>();
    return launch(
        [=](const ProgressFn& progress) {
            const auto start = std::chrono::steady_clock::now();
            report_progress(progress, 0.0, "tokenizing " + text_path.toStdString());
            const std::string text = read_text_file(text_path.toStdString());
            const std::vector<int> tokens = model->tokenizer->encode(text);
            const int len = seqlen > 0 ? seqlen : model->context;
            CalibrationData data = calibrate(*model->model, sample_calibration_windows(tokens, nsamples, len, seed), progress);
            data.text_sha256 = sha256_of_bytes(text);
            *result = summarize(*model, std::move(data), text_path, seconds_since(start));
        },
        [this, result] { Q_EMIT calibrated(*result); });
}

bool CalibrateJob::startLoad(std::shared_ptr<const LoadedModel> model, const QString& calibration_path)
{
    auto result = std::make_shared<std::shared_ptr<CalibrationResult>>();
    return launch(
        [=](const ProgressFn& progress) {
            const auto start = std::chrono::steady_clock::now();
            report_progress(progress, 0.0, "reading " + calibration_path.toStdString());
            // A big model's Hessians stay on disk and are read when a Linear needs its own
            // (a 7B model's are 44 GB in float64).
            const ModelConfig& c = model->model->config;
            const bool on_demand = c.n_layers * layer_hessian_bytes(c) > kStudioHessiansInMemoryBytes;
            CalibrationData data = read_calibration_file(calibration_path.toStdString(), c,
                                                         on_demand ? HessianLoading::OnDemand : HessianLoading::All);
            *result = summarize(*model, std::move(data), calibration_path, seconds_since(start));
            report_progress(progress, 1.0, "read");
        },
        [this, result] { Q_EMIT calibrated(*result); });
}

void CalibrateJob::save(const LoadedModel& model, const CalibrationResult& result, const QString& path)
{
    write_calibration_file(*result.data, model.model->config, path.toStdString());
}

bool QuantizeJob::start(std::shared_ptr<const LoadedModel> model, const RunRequest& request)
{
    request.plan.validate();
    if (model->packed)
        throw Error(model->path.toStdString() + " is already quantized (a packed checkpoint): open its full-precision "
                                                "model to quantize it");
    auto result = std::make_shared<std::shared_ptr<RunResult>>();
    QPointer<QuantizeJob> self(this);
    return launch(
        [=](const ProgressFn& progress) {
            const auto start = std::chrono::steady_clock::now();
            const QuantConfig& cfg = request.plan.config;
            report_progress(progress, 0.0, "tokenizing " + request.calibration_text.toStdString());
            const std::string text = read_text_file(request.calibration_text.toStdString());
            const std::vector<int> tokens = model->tokenizer->encode(text);
            std::vector<int> eval_tokens;
            if (!request.eval_text.isEmpty())
                eval_tokens = tokens_of_file(*model, request.eval_text);
            PerplexitySettings eval_settings;
            eval_settings.max_windows = request.eval_windows;
            auto out = std::make_shared<RunResult>();
            QuantizedModel q;
            if (!request.qat) {
                const int seqlen = cfg.seqlen > 0 ? cfg.seqlen : model->context;
                q = quantize_model(*model->model, sample_calibration_windows(tokens, cfg.nsamples, seqlen, cfg.seed),
                                   request.plan, [&](double f, std::string_view stage) {
                                       return progress(0.05 + 0.8 * f, stage);
                                   });
                out->method = QString::fromStdString(to_string(cfg.layer.method));
            } else {
                // A float32 teacher and student, their gradients and AdamW's two moments: refused
                // with the figures rather than killed (a 1.1B model needs about 26 GB).
                require_memory(model->parameters * 24, "QAT of " + model->display_name.toStdString() +
                                                           " (float32 teacher, student, gradients and AdamW state: "
                                                           "about 24 bytes a parameter)");
                QatSettings s;
                s.salient_ratio = cfg.layer.salient_ratio;
                s.salient_bits = cfg.layer.salient_bits == 16 ? 8 : cfg.layer.salient_bits;
                s.binarizer = cfg.layer.binarizer == Binarizer::Sign ? Binarizer::Sign : Binarizer::Xnor;
                s.steps = request.qat_steps;
                s.lr = request.qat_lr;
                s.kd = request.qat_kd;
                s.seed = cfg.seed;
                s.seqlen = cfg.seqlen;
                QatResult r = train_qat(*model->model, tokens, s, std::nullopt, {}, {}, [&](const QatProgress& p) {
                    const TrainingStep step{p.step, p.steps, p.loss, p.eval_ppl.value_or(0.0)};
                    QMetaObject::invokeMethod(
                        self, [self, step] { if (self) Q_EMIT self->trainingStep(step); }, Qt::QueuedConnection);
                    return progress(0.05 + 0.8 * p.step / std::max(p.steps, 1), "training step " + std::to_string(p.step));
                });
                if (r.stopped_early)
                    throw Cancelled();
                q = std::move(r.quantized);
                out->method = QStringLiteral("qat");
            }
            q.tokenizer_bytes = model->tokenizer->model_bytes();
            q.calibration_sha256 = sha256_of_bytes(text);
            q.source_sha256 = QFileInfo(model->path).isFile() ? sha256_of_file(model->path.toStdString()) : "";
            out->bits = packed_bits(q);
            out->salient_ratio = q.salient_ratio();
            if (!eval_tokens.empty()) {
                const EvalResult before = evaluate_perplexity(*model->model, eval_tokens, eval_settings, [&](double f, std::string_view) {
                    return progress(0.85 + 0.075 * f, "perplexity before");
                });
                const EvalResult after = evaluate_perplexity(q.model, eval_tokens, eval_settings, [&](double f, std::string_view) {
                    return progress(0.925 + 0.075 * f, "perplexity after");
                });
                out->ppl_before = before.ppl;
                out->ppl_after = after.ppl;
                out->eval_windows = static_cast<int>(after.windows);
            }
            out->quantized = std::make_shared<const QuantizedModel>(std::move(q));
            // Compare runs the result as an exported file would run: from its bits.
            out->model = std::make_shared<const Model>(packed_runtime_model(*out->quantized));
            out->seconds = seconds_since(start);
            report_progress(progress, 1.0, "done");
            *result = out;
        },
        [this, result] { Q_EMIT quantized(*result); });
}

bool ExportJob::start(std::shared_ptr<const RunResult> result, const LoadedModel& source, const QString& path,
                      bool overwrite, const QString& hf_dir)
{
    if (!result || !result->quantized)
        throw Error("nothing to export: run a quantization first");
    if (!overwrite && QFileInfo::exists(path))
        throw Error(path.toStdString() + ": file exists (choose another name or allow replacing it)");
    const std::int64_t fp16_bytes = source.fp16_bytes;
    auto out = std::make_shared<ExportResult>();
    return launch(
        [=](const ProgressFn& progress) {
            report_progress(progress, 0.0, "writing " + path.toStdString());
            write_packed_checkpoint(*result->quantized, path.toStdString());
            if (!hf_dir.isEmpty()) {
                report_progress(progress, 0.6, "writing " + hf_dir.toStdString());
                save_hf(result->quantized->model, hf_dir.toStdString());
            }
            out->path = path;
            out->hf_dir = hf_dir;
            out->file_bytes = QFileInfo(path).size();
            out->bits = result->bits;
            out->compression_vs_fp16 = out->file_bytes > 0 ? static_cast<double>(fp16_bytes) / static_cast<double>(out->file_bytes) : 0.0;
            report_progress(progress, 1.0, "written");
        },
        [this, out] { Q_EMIT exported(*out); });
}

bool GenerateJob::start(std::shared_ptr<const Model> model, std::shared_ptr<const Tokenizer> tokenizer,
                        const QString& prompt, const SamplerChoice& sampler)
{
    auto out = std::make_shared<GenerationOutcome>();
    QPointer<GenerateJob> self(this);
    return launch(
        [=](const ProgressFn& progress) {
            GenerationSettings settings;
            settings.max_new_tokens = sampler.max_new_tokens;
            settings.sampler.temperature = sampler.temperature;
            settings.sampler.top_p = sampler.top_p;
            settings.sampler.seed = sampler.seed;
            settings.sampler.validate();
            StreamingDetokenizer detok(*tokenizer);
            int produced = 0;
            const GenerationResult r = generate(*model, *tokenizer, prompt.toStdString(), settings, [&](int id, std::string_view) {
                const QString piece = QString::fromStdString(detok.push(id));
                if (!piece.isEmpty())
                    QMetaObject::invokeMethod(self, [self, piece] { if (self) Q_EMIT self->token(piece); }, Qt::QueuedConnection);
                return progress(static_cast<double>(++produced) / settings.max_new_tokens, "generating");
            });
            const QString tail = QString::fromStdString(detok.flush());
            if (!tail.isEmpty())
                QMetaObject::invokeMethod(self, [self, tail] { if (self) Q_EMIT self->token(tail); }, Qt::QueuedConnection);
            out->text = QString::fromStdString(r.completion);
            out->prompt_tokens = r.prompt_tokens;
            out->tokens = r.tokens;
            out->tokens_per_second = r.tokens_per_second;
            out->seconds = r.seconds;
            out->cancelled = r.cancelled;
            const std::int64_t bytes = resident_weight_bytes(*model);
            const ModelConfig& c = model->config;
            const std::int64_t positions = static_cast<std::int64_t>(r.prompt_tokens.size() + r.tokens.size());
            out->memory_bytes = bytes + 2LL * c.n_layers * positions * c.kv_dim() * 4; // + fp32 KV cache
        },
        [this, out] { Q_EMIT generated(*out); });
}

bool EvaluateJob::start(std::shared_ptr<const Model> model, std::shared_ptr<const Tokenizer> tokenizer,
                        const QString& text_path, int windows)
{
    auto out = std::make_shared<EvaluationOutcome>();
    return launch(
        [=](const ProgressFn& progress) {
            report_progress(progress, 0.0, "tokenizing " + text_path.toStdString());
            const std::vector<int> tokens = tokenizer->encode(read_text_file(text_path.toStdString()));
            PerplexitySettings settings;
            settings.max_windows = windows;
            const EvalResult r = evaluate_perplexity(*model, tokens, settings, progress);
            out->ppl = r.ppl;
            out->windows = static_cast<int>(r.windows);
            out->seqlen = r.seqlen;
            out->tokens_per_second = r.tokens_per_second;
            out->seconds = r.seconds;
        },
        [this, out] { Q_EMIT evaluated(*out); });
}

bool ScoreJob::start(std::shared_ptr<const Model> reference, std::vector<int> prompt_tokens, std::vector<int> tokens)
{
    auto nll = std::make_shared<double>(0.0);
    return launch(
        [=](const ProgressFn& progress) {
            std::vector<int> all = prompt_tokens;
            all.insert(all.end(), tokens.begin(), tokens.end());
            all.resize(std::min<std::size_t>(all.size(), static_cast<std::size_t>(reference->config.usable_context())));
            report_progress(progress, 0.0, "scoring");
            *nll = all.size() > prompt_tokens.size() ? continuation_nll(*reference, all, prompt_tokens.size()) : 0.0;
            report_progress(progress, 1.0, "scored");
        },
        [this, nll] { Q_EMIT scored(*nll); });
}

} // namespace pbllm
