#pragma once
// Live previews for the tuning sliders, off the GUI thread. One serial worker owns the per-Linear
// LayerPreview objects (Hessian factors, scores and radix histograms are prepared once); each
// request gets an id, and a request that is no longer the newest is abandoned between Linears
// and never delivered, so dragging a slider only ever shows the latest position.
// A model whose Linears exceed the sample budget (8 bytes of preview state per weight) is
// previewed from evenly spaced rows of each Linear; requestExact() then follows the sampled
// figures with an exact pass that builds one whole Linear at a time.
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
    bool sampled = false;              ///< from the row sample (the whole Linear's follows)
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
    /// unless a newer request came first. Sampled figures when the model is sampled().
    std::uint64_t request(const QuantPlan& plan);
    /// As request(), then, for a sampled model, an exact pass over every whole Linear (one in
    /// memory at a time, exactProgress after each) delivered as a second previewReady with the
    /// same id: what the Tuning page asks for when the slider is released.
    std::uint64_t requestExact(const QuantPlan& plan);
    /// Most weights the prepared previews may hold (8 bytes each); bigger models are sampled.
    /// Takes effect at the next prepare().
    void setSampleBudget(std::int64_t weights) { sample_budget_ = weights; }
    /// 32M weights: 256 MiB of preview state and about 55 ms a slider move (1.7 ns a weight);
    /// stories110M (85M Linear weights) is previewed from 39% of its rows, 7B from 0.5%.
    static constexpr std::int64_t kDefaultSampleBudget = std::int64_t(32) << 20;
    /// Share of each Linear's rows the prepared previews hold (1 = exact).
    double sampledFraction() const { return sampled_fraction_.load(); }
    /// Heat map and score histogram of one Linear at `ratio` (newest request only, too).
    std::uint64_t requestDetail(int linear, double ratio, int rows = 64, int cols = 64);

    bool ready() const { return ready_.load(); }
    SaliencyMetric metric() const { return metric_; }
    /// Blocks until queued work is done (tests, shutdown).
    void waitForDone()
    {
        pool_.waitForDone();
        exact_pool_.waitForDone();
        detail_pool_.waitForDone();
    }

Q_SIGNALS:
    void prepared();
    void failed(const QString& message);
    void previewReady(const pbllm::PreviewSnapshot& snapshot);
    /// The exact pass of request `id` has done `done` of `total` Linears.
    void exactProgress(quint64 id, int done, int total);
    void detailReady(std::uint64_t id, const pbllm::LinearDetail& detail);

private:
    std::uint64_t enqueue(const QuantPlan& plan, bool exact);
    /// The exact figures of request `id` (exact_pool_ thread; all it reads is passed in).
    void exact_pass(std::uint64_t id, const QuantPlan& plan, const LoadedModel& model, const CalibrationResult* calibration,
                    SaliencyMetric metric);
    void serve_detail();                                      ///< pool thread: the newest detail asked for
    /// The whole Linear `i` (not a sample), for exact figures and the detail view (pool thread).
    std::shared_ptr<LayerPreview> exact_preview(std::size_t i) const;

    QThreadPool pool_; ///< one thread: LayerPreview objects are never used concurrently
    QThreadPool exact_pool_; ///< one thread for exact passes, which build their own previews
    // Touched on the pool thread only.
    std::shared_ptr<const LoadedModel> model_;
    std::shared_ptr<const CalibrationResult> calibration_;
    std::vector<std::shared_ptr<LayerPreview>> previews_;
    std::shared_ptr<LayerPreview> histogram_of_; ///< whose score histogram histogram_ is
    Bins histogram_;
    // Touched on the detail_pool_ thread only: the whole Linear last shown in detail.
    QThreadPool detail_pool_;
    std::shared_ptr<LayerPreview> whole_detail_, whole_histogram_of_;
    Bins whole_histogram_;
    std::uint64_t whole_detail_generation_ = 0;
    int whole_detail_index_ = -1;
    std::atomic<int> whole_detail_linear_{-1}; ///< its index for the pool thread (-1 none)
    struct DetailRequest {
        std::uint64_t id = 0;
        int linear = 0;
        double ratio = 0.0;
        int rows = 0, cols = 0;
    };
    std::mutex detail_mutex_;
    DetailRequest pending_detail_; ///< under detail_mutex_
    SaliencyMetric prepared_metric_ = SaliencyMetric::Magnitude;
    SaliencyMetric metric_ = SaliencyMetric::Magnitude; ///< GUI thread
    std::int64_t sample_budget_ = kDefaultSampleBudget;
    std::atomic<double> sampled_fraction_{1.0};
    std::atomic<bool> ready_{false};
    std::atomic<std::uint64_t> latest_{0}, latest_detail_{0}, generation_{0};
};

} // namespace pbllm

Q_DECLARE_METATYPE(pbllm::LinearDetail)
