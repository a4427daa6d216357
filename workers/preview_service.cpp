#include "workers/preview_service.h"

#include "core/packed_runtime.h"
#include "core/calibration.h"
#include "core/calibration_file.h"
#include "core/error.h"
#include "core/model.h"
#include "core/preview.h"
#include "core/quant/registry.h"
#include "core/system.h"
#include "workers/background.h"
#include "core/tokenizer.h"

#include <ATen/ATen.h>

#include <QMetaObject>
#include <QPointer>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>

namespace pbllm {

PreviewService::PreviewService(QObject* parent) : QObject(parent)
{
    pool_.setMaxThreadCount(1);
    pool_.setExpiryTimeout(-1);
    exact_pool_.setMaxThreadCount(1);
    detail_pool_.setMaxThreadCount(1);
}

PreviewService::~PreviewService()
{
    ++generation_; // running tasks see they are stale and stop
    ++latest_;
    ++latest_detail_;
    pool_.waitForDone();
    exact_pool_.waitForDone();
    detail_pool_.waitForDone();
}

void PreviewService::prepare(std::shared_ptr<const LoadedModel> model, std::shared_ptr<const CalibrationResult> calibration,
                             SaliencyMetric metric)
{
    const std::uint64_t gen = ++generation_;
    ++latest_; // drop pending previews of the old state
    ready_.store(false);
    metric_ = metric;
    QPointer<PreviewService> self(this);
    const double fraction =
        model->quantizable_weights > sample_budget_ ? static_cast<double>(sample_budget_) / static_cast<double>(model->quantizable_weights) : 1.0;
    pool_.start([this, self, gen, model, calibration, metric, fraction] {
        set_threads_here(background::interactive_threads());
        std::vector<std::shared_ptr<LayerPreview>> previews;
        QString error;
        try {
            if (metric != SaliencyMetric::Magnitude && !calibration)
                throw Error("the " + to_string(metric) + " metric needs calibration: run it on the Distributions page");
            model_ = model; // before exact_preview below; only this pool thread reads it
            calibration_ = calibration;
            prepared_metric_ = metric;
            histogram_of_.reset();
            whole_detail_linear_.store(-1);
            for (std::size_t i = 0; i < model->linears.size() && gen == generation_.load(); ++i) {
                const LinearInfo& info = model->linears[i];
                if (fraction >= 1.0) {
                    previews.push_back(exact_preview(i));
                    continue;
                }
                PreviewOptions options;
                options.max_weights = static_cast<std::int64_t>(std::ceil(fraction * static_cast<double>(info.weight_count())));
                options.keep_hessian = false;
                const LinearKind kind = kAllLinearKinds[i % kLinearKindCount];
                at::Tensor H;
                if (calibration)
                    H = calibration_hessian(*calibration->data, info.layer, input_of(kind));
                previews.push_back(std::make_shared<LayerPreview>(
                    info.name.toStdString(), dense_linear_weight(model->model->layers[static_cast<std::size_t>(info.layer)], kind), H, metric, options));
            }
        } catch (const std::exception& e) {
            error = QString::fromStdString(e.what());
        }
        if (gen != generation_.load())
            return;
        // Only this pool thread reads previews_, so it may be replaced here.
        previews_ = error.isEmpty() ? std::move(previews) : std::vector<std::shared_ptr<LayerPreview>>{};
        sampled_fraction_.store(std::min(fraction, 1.0));
        QMetaObject::invokeMethod(
            self, [self, error, gen] {
                if (!self || gen != self->generation_.load())
                    return;
                if (!error.isEmpty()) {
                    Q_EMIT self->failed(error);
                    return;
                }
                self->ready_.store(true);
                Q_EMIT self->prepared();
            },
            Qt::QueuedConnection);
    }, 2); // ahead of previews and details queued before it (they are for this model)
}

namespace {

/// The whole Linear `i` of `model` (not a sample).
std::shared_ptr<LayerPreview> whole_linear_preview(const LoadedModel& model, const CalibrationResult* calibration,
                                                   SaliencyMetric metric, std::size_t i)
{
    const LinearInfo& info = model.linears[i];
    const LinearKind kind = kAllLinearKinds[i % kLinearKindCount];
    at::Tensor H;
    if (calibration)
        H = calibration_hessian(*calibration->data, info.layer, input_of(kind));
    PreviewOptions options;
    options.keep_hessian = false; // the service shows the diagonal proxy only
    return std::make_shared<LayerPreview>(info.name.toStdString(), dense_linear_weight(model.model->layers[static_cast<std::size_t>(info.layer)], kind),
                                          H, metric, options);
}

} // namespace

std::shared_ptr<LayerPreview> PreviewService::exact_preview(std::size_t i) const
{
    return whole_linear_preview(*model_, calibration_.get(), prepared_metric_, i);
}

std::uint64_t PreviewService::request(const QuantPlan& plan) { return enqueue(plan, false); }

std::uint64_t PreviewService::requestExact(const QuantPlan& plan) { return enqueue(plan, true); }

namespace {

/// Error and bits of every Linear under `plan`, from preview_of(i); false when `stale()` turned
/// true between Linears (a newer request is waiting).
bool snapshot_of(const QuantPlan& plan, const LoadedModel& model, std::size_t count,
                 const std::function<std::shared_ptr<LayerPreview>(std::size_t)>& preview_of,
                 const std::function<bool(std::size_t)>& stale, PreviewSnapshot& snap)
{
    const auto start = std::chrono::steady_clock::now();
    std::int64_t quantized_weights = 0;
    double headline = 0, bitmap = 0, index = 0;
    std::int64_t bytes = 0;
    snap.linears.clear();
    for (std::size_t i = 0; i < count; ++i) {
        if (stale(i))
            return false;
        const std::string name = model.linears[i].name.toStdString();
        const std::int64_t n = model.linears[i].weight_count();
        const LayerQuantSettings s = plan.settings_for(name);
        LinearPreview lp;
        lp.linear = static_cast<int>(i);
        if (s.skip) {
            lp.salient_bits = 16;
            lp.salient_ratio = 1.0;
            lp.estimated_bytes = 2 * n;
            bytes += lp.estimated_bytes;
            snap.linears.push_back(lp);
            continue;
        }
        const std::shared_ptr<LayerPreview> p = preview_of(i);
        // Each method's own estimate (the registry's preview function).
        const PreviewResult r = method_info(s.method).preview(*p, s, plan.config.blocksize, plan.config.percdamp);
        lp.salient_ratio = r.salient_ratio;
        lp.threshold = r.threshold;
        lp.weight_error = r.weight_error;
        lp.hessian_error = r.hessian_error_diag;
        lp.salient_bits = r.grid_bits;
        lp.estimated_bytes = r.estimated_bytes;
        snap.linears.push_back(lp);
        quantized_weights += n;
        headline += r.headline_bits * static_cast<double>(n);
        bitmap += r.bitmap_bits * static_cast<double>(n);
        index += r.index_bits * static_cast<double>(n);
        bytes += r.estimated_bytes;
    }
    const double q = static_cast<double>(std::max<std::int64_t>(quantized_weights, 1));
    snap.headline_bits = headline / q;
    snap.bitmap_bits = bitmap / q;
    snap.index_bits = index / q;
    std::int64_t linear_bytes = 0;
    for (const LinearPreview& lp : snap.linears)
        if (lp.salient_bits != 16 || lp.salient_ratio < 1.0)
            linear_bytes += lp.estimated_bytes;
    snap.estimated_bits = 8.0 * static_cast<double>(linear_bytes) / q;
    // Everything else is stored as FP16, plus the embedded tokenizer and container overhead.
    const std::int64_t rest = 2 * (model.parameters - model.quantizable_weights);
    snap.estimated_file_bytes = bytes + rest + static_cast<std::int64_t>(model.tokenizer->model_bytes().size()) + 64 * 1024;
    snap.milliseconds = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    return true;
}

} // namespace

std::uint64_t PreviewService::enqueue(const QuantPlan& plan, bool exact)
{
    const std::uint64_t id = ++latest_;
    QPointer<PreviewService> self(this);
    pool_.start([this, self, id, plan, exact] {
        if (id != latest_.load() || previews_.empty())
            return;
        background::interactive_now();
        set_threads_here(background::interactive_threads());
        const auto stale = [&](std::size_t) { return id != latest_.load(); };
        const auto deliver = [&](const PreviewSnapshot& snap) {
            QMetaObject::invokeMethod(
                self, [self, snap] { if (self && snap.id == self->latest_.load()) Q_EMIT self->previewReady(snap); },
                Qt::QueuedConnection);
        };
        PreviewSnapshot snap;
        snap.id = id;
        snap.sampled_fraction = sampled_fraction_.load();
        try {
            if (!snapshot_of(plan, *model_, previews_.size(), [&](std::size_t i) { return previews_[i]; }, stale, snap))
                return; // a newer position of the slider is waiting
            deliver(snap);
            if (!exact || snap.exact())
                return;
        } catch (const std::exception& e) {
            const QString message = QString::fromStdString(e.what());
            QMetaObject::invokeMethod(self, [self, message] { if (self) Q_EMIT self->failed(message); }, Qt::QueuedConnection);
            return;
        }
        // On its own thread, so a slider move or a selected Linear never waits behind it.
        exact_pool_.start([this, id, plan, model = model_, calibration = calibration_, metric = prepared_metric_] {
            exact_pass(id, plan, *model, calibration.get(), metric);
        });
    }, 1);
    return id;
}

void PreviewService::exact_pass(std::uint64_t id, const QuantPlan& plan, const LoadedModel& model,
                                const CalibrationResult* calibration, SaliencyMetric metric)
{
    QPointer<PreviewService> self(this);
    const background::Unit unit;
    const auto stale = [&](std::size_t) {
        background::yield_to_interactive(); // between Linears: the sliders first
        return id != latest_.load();
    };
    try {
        // The exact pass: each whole Linear built, previewed and dropped in turn.
        const int total = static_cast<int>(model.linears.size());
        PreviewSnapshot whole;
        whole.id = id;
        const auto exact_of = [&](std::size_t i) {
            QMetaObject::invokeMethod(
                self, [self, id, i, total] { if (self && id == self->latest_.load()) Q_EMIT self->exactProgress(id, static_cast<int>(i), total); },
                Qt::QueuedConnection);
            return whole_linear_preview(model, calibration, metric, i);
        };
        if (!snapshot_of(plan, model, model.linears.size(), exact_of, stale, whole))
            return;
        whole.sampled_fraction = 1.0;
        QMetaObject::invokeMethod(
            self, [self, id, total] { if (self && id == self->latest_.load()) Q_EMIT self->exactProgress(id, total, total); },
            Qt::QueuedConnection);
        QMetaObject::invokeMethod(
            self, [self, whole] { if (self && whole.id == self->latest_.load()) Q_EMIT self->previewReady(whole); },
            Qt::QueuedConnection);
    } catch (const std::exception& e) {
        const QString message = QString::fromStdString(e.what());
        QMetaObject::invokeMethod(self, [self, message] { if (self) Q_EMIT self->failed(message); }, Qt::QueuedConnection);
    }
}

std::uint64_t PreviewService::requestDetail(int linear, double ratio, int rows, int cols)
{
    std::uint64_t id = 0;
    {
        const std::lock_guard<std::mutex> lock(detail_mutex_);
        id = ++latest_detail_;
        pending_detail_ = {id, linear, ratio, rows, cols};
    }
    pool_.start([this] { serve_detail(); }, 1);
    return id;
}

namespace {

/// Heat map, threshold and score histogram of `p` at the request's ratio; `histogram` caches the
/// ratio-independent score histogram of `histogram_of`.
LinearDetail detail_of(const std::shared_ptr<LayerPreview>& p, int linear, double ratio, int rows, int cols,
                       std::shared_ptr<LayerPreview>& histogram_of, Bins& histogram)
{
    LinearDetail d;
    d.linear = linear;
    d.ratio = ratio;
    d.sampled = p->sampled();
    d.rows = static_cast<int>(std::min<std::int64_t>(rows, p->sampled_rows()));
    d.cols = static_cast<int>(std::min<std::int64_t>(cols, p->cols()));
    const PreviewResult at_ratio = p->preview(std::clamp(ratio, 0.0, 1.0), 8, Binarizer::Xnor);
    d.achieved_ratio = at_ratio.salient_ratio;
    d.threshold = at_ratio.threshold;
    d.density = p->salient_density(ratio, d.rows, d.cols);
    if (histogram_of != p) {
        histogram.counts = p->log10_score_histogram(80, histogram.lo, histogram.hi);
        histogram_of = p;
    }
    d.log10_scores = histogram;
    return d;
}

} // namespace

void PreviewService::serve_detail()
{
    DetailRequest r;
    {
        const std::lock_guard<std::mutex> lock(detail_mutex_);
        r = pending_detail_;
        pending_detail_.id = 0; // served (a queued task finding 0 has nothing to do)
    }
    if (r.id == 0 || r.id != latest_detail_.load() || r.linear < 0 || static_cast<std::size_t>(r.linear) >= previews_.size())
        return;
    QPointer<PreviewService> self(this);
    const std::uint64_t id = r.id;
    const auto deliver = [self, id](const LinearDetail& d) {
        QMetaObject::invokeMethod(
            self, [self, id, d] { if (self && id == self->latest_detail_.load()) Q_EMIT self->detailReady(id, d); },
            Qt::QueuedConnection);
    };
    background::interactive_now();
    set_threads_here(background::interactive_threads());
    const std::shared_ptr<LayerPreview>& p = previews_[static_cast<std::size_t>(r.linear)];
    if (!p->sampled() || whole_detail_linear_.load() != r.linear) // at once (from the row sample if sampled)
        deliver(detail_of(p, r.linear, r.ratio, r.rows, r.cols, histogram_of_, histogram_));
    if (!p->sampled())
        return;
    // The whole Linear, on its own thread: building it reads all of its weights (seconds for a
    // 7B down_proj from a cold disk), and slider previews must not wait behind that.
    const std::uint64_t generation = generation_.load();
    detail_pool_.start([this, r, deliver, generation, model = model_, calibration = calibration_, metric = prepared_metric_] {
        if (r.id != latest_detail_.load() || generation != generation_.load())
            return;
        const background::Unit unit;
        if (!whole_detail_ || whole_detail_generation_ != generation || whole_detail_index_ != r.linear) {
            whole_detail_.reset(); // one whole Linear in memory at a time
            whole_histogram_of_.reset();
            whole_detail_linear_.store(-1);
            whole_detail_ = whole_linear_preview(*model, calibration.get(), metric, static_cast<std::size_t>(r.linear));
            whole_detail_generation_ = generation;
            whole_detail_index_ = r.linear;
            whole_detail_linear_.store(r.linear);
        }
        deliver(detail_of(whole_detail_, r.linear, r.ratio, r.rows, r.cols, whole_histogram_of_, whole_histogram_));
    });
}

} // namespace pbllm
