#include "workers/preview_service.h"

#include "core/calibration.h"
#include "core/error.h"
#include "core/model.h"
#include "core/preview.h"
#include "core/tokenizer.h"

#include <ATen/ATen.h>

#include <QMetaObject>
#include <QPointer>

#include <algorithm>
#include <chrono>

namespace pbllm {

PreviewService::PreviewService(QObject* parent) : QObject(parent)
{
    pool_.setMaxThreadCount(1);
    pool_.setExpiryTimeout(-1);
}

PreviewService::~PreviewService()
{
    ++generation_; // running tasks see they are stale and stop
    ++latest_;
    ++latest_detail_;
    pool_.waitForDone();
}

void PreviewService::prepare(std::shared_ptr<const LoadedModel> model, std::shared_ptr<const CalibrationResult> calibration,
                             SaliencyMetric metric)
{
    const std::uint64_t gen = ++generation_;
    ++latest_; // drop pending previews of the old state
    ready_.store(false);
    metric_ = metric;
    QPointer<PreviewService> self(this);
    pool_.start([this, self, gen, model, calibration, metric] {
        std::vector<std::shared_ptr<LayerPreview>> previews;
        QString error;
        try {
            if (metric != SaliencyMetric::Magnitude && !calibration)
                throw Error("the " + to_string(metric) + " metric needs calibration: run it on the Distributions page");
            for (std::size_t i = 0; i < model->linears.size() && gen == generation_.load(); ++i) {
                const LinearInfo& info = model->linears[i];
                const LinearKind kind = kAllLinearKinds[i % kLinearKindCount];
                const at::Tensor& W = model->model->layers[static_cast<std::size_t>(info.layer)].weight(kind);
                at::Tensor H;
                if (calibration)
                    H = calibration->data->hessians[static_cast<std::size_t>(info.layer)][static_cast<int>(input_of(kind))];
                previews.push_back(std::make_shared<LayerPreview>(info.name.toStdString(), W, H, metric));
            }
        } catch (const std::exception& e) {
            error = QString::fromStdString(e.what());
        }
        if (gen != generation_.load())
            return;
        QMetaObject::invokeMethod(
            self, [self, model, previews, error, gen] {
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
        // Only this pool thread reads previews_, so it may be replaced here.
        model_ = model;
        previews_ = error.isEmpty() ? std::move(previews) : std::vector<std::shared_ptr<LayerPreview>>{};
    });
}

std::uint64_t PreviewService::request(const QuantPlan& plan)
{
    const std::uint64_t id = ++latest_;
    QPointer<PreviewService> self(this);
    pool_.start([this, self, id, plan] {
        if (id != latest_.load() || previews_.empty())
            return;
        const auto start = std::chrono::steady_clock::now();
        PreviewSnapshot snap;
        snap.id = id;
        std::int64_t quantized_weights = 0, salient = 0;
        double headline = 0, bitmap = 0, index = 0;
        std::int64_t bytes = 0;
        try {
            for (std::size_t i = 0; i < previews_.size(); ++i) {
                if (id != latest_.load())
                    return; // a newer position of the slider is waiting
                LayerPreview& p = *previews_[i];
                const std::int64_t n = p.rows() * p.cols();
                const LayerQuantSettings s = plan.settings_for(p.name());
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
                // Plain GPTQ puts every weight on the b-bit grid: ratio 1 at `bits`.
                const bool plain = s.method == QuantMethod::Gptq;
                const PreviewResult r = p.preview(plain ? 1.0 : s.salient_ratio, plain ? s.bits : s.salient_bits, s.binarizer);
                lp.salient_ratio = r.salient_ratio;
                lp.threshold = r.threshold;
                lp.weight_error = r.weight_error;
                lp.hessian_error = r.hessian_error_diag;
                lp.salient_bits = plain ? s.bits : s.salient_bits;
                lp.estimated_bytes = r.estimated_bytes;
                snap.linears.push_back(lp);
                quantized_weights += n;
                salient += static_cast<std::int64_t>(r.salient_ratio * static_cast<double>(n));
                headline += r.headline_bits * static_cast<double>(n);
                bitmap += r.bitmap_bits * static_cast<double>(n);
                index += r.index_bits * static_cast<double>(n);
                bytes += r.estimated_bytes;
            }
        } catch (const std::exception& e) {
            const QString message = QString::fromStdString(e.what());
            QMetaObject::invokeMethod(self, [self, message] { if (self) Q_EMIT self->failed(message); }, Qt::QueuedConnection);
            return;
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
        const std::int64_t rest = 2 * (model_->parameters - model_->quantizable_weights);
        snap.estimated_file_bytes = bytes + rest + static_cast<std::int64_t>(model_->tokenizer->model_bytes().size()) + 64 * 1024;
        snap.milliseconds = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
        QMetaObject::invokeMethod(
            self, [self, snap] { if (self && snap.id == self->latest_.load()) Q_EMIT self->previewReady(snap); },
            Qt::QueuedConnection);
    });
    return id;
}

std::uint64_t PreviewService::requestDetail(int linear, double ratio, int rows, int cols)
{
    const std::uint64_t id = ++latest_detail_;
    QPointer<PreviewService> self(this);
    pool_.start([this, self, id, linear, ratio, rows, cols] {
        if (id != latest_detail_.load() || linear < 0 || static_cast<std::size_t>(linear) >= previews_.size())
            return;
        LayerPreview& p = *previews_[static_cast<std::size_t>(linear)];
        LinearDetail d;
        d.linear = linear;
        d.ratio = ratio;
        d.rows = static_cast<int>(std::min<std::int64_t>(rows, p.rows()));
        d.cols = static_cast<int>(std::min<std::int64_t>(cols, p.cols()));
        const PreviewResult at_ratio = p.preview(std::clamp(ratio, 0.0, 1.0), 8, Binarizer::Xnor);
        d.achieved_ratio = at_ratio.salient_ratio;
        d.threshold = at_ratio.threshold;
        d.density = p.salient_density(ratio, d.rows, d.cols);
        d.log10_scores.counts = p.log10_score_histogram(80, d.log10_scores.lo, d.log10_scores.hi);
        QMetaObject::invokeMethod(
            self, [self, id, d] { if (self && id == self->latest_detail_.load()) Q_EMIT self->detailReady(id, d); },
            Qt::QueuedConnection);
    });
    return id;
}

} // namespace pbllm
