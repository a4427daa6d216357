#pragma once
// Live previews for the tuning sliders, off the GUI thread. One serial worker owns the per-Linear
// LayerPreview objects (Hessian factors, scores and radix histograms are prepared once); each
// request gets an id, and a request that is no longer the newest is abandoned between Linears
// and never delivered, so dragging a slider only ever shows the latest position.
#include "workers/results.h"

#include <QObject>
#include <QThreadPool>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace pbllm {

class LayerPreview;

/// Where salient weights sit in one Linear and how its scores are distributed.
struct LinearDetail {
    int linear = 0;
    double ratio = 0.0;                ///< requested
    double achieved_ratio = 0.0;       ///< share of weights above the threshold
    double threshold = 0.0;            ///< saliency score threshold at `ratio`
    int rows = 0, cols = 0;            ///< heat map size
    std::vector<float> density;        ///< salient share per cell, row-major
    Bins log10_scores;
};

class PreviewService : public QObject {
    Q_OBJECT
public:
    explicit PreviewService(QObject* parent = nullptr);
    ~PreviewService() override;

    /// Prepares previews for every Linear of `model` with `metric`; Hessian metrics need
    /// `calibration`. Emits prepared() (or failed()). Pending requests are dropped.
    void prepare(std::shared_ptr<const LoadedModel> model, std::shared_ptr<const CalibrationResult> calibration,
                 SaliencyMetric metric);
    /// Error and bits of every Linear under `plan`; the result arrives as previewReady(id, ...)
    /// unless a newer request came first.
    std::uint64_t request(const QuantPlan& plan);
    /// Heat map and score histogram of one Linear at `ratio` (newest request only, too).
    std::uint64_t requestDetail(int linear, double ratio, int rows = 64, int cols = 64);

    bool ready() const { return ready_.load(); }
    SaliencyMetric metric() const { return metric_; }
    /// Blocks until queued work is done (tests, shutdown).
    void waitForDone() { pool_.waitForDone(); }

Q_SIGNALS:
    void prepared();
    void failed(const QString& message);
    void previewReady(const pbllm::PreviewSnapshot& snapshot);
    void detailReady(std::uint64_t id, const pbllm::LinearDetail& detail);

private:
    QThreadPool pool_; ///< one thread: LayerPreview objects are never used concurrently
    std::shared_ptr<const LoadedModel> model_;
    std::vector<std::shared_ptr<LayerPreview>> previews_; ///< touched on the pool thread only
    SaliencyMetric metric_ = SaliencyMetric::Magnitude;
    std::atomic<bool> ready_{false};
    std::atomic<std::uint64_t> latest_{0}, latest_detail_{0}, generation_{0};
};

} // namespace pbllm

Q_DECLARE_METATYPE(pbllm::LinearDetail)
