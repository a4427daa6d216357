#include "workers/linear_stats_service.h"

#include "workers/background.h"

#include "core/packed_runtime.h"
#include "core/model.h"
#include "core/tensor_stats.h"

#include <ATen/ATen.h>

#include <QMetaObject>
#include <QPointer>

#include <chrono>

namespace pbllm {

LinearStats compute_linear_stats(const LoadedModel& model, int linear)
{
    const auto start = std::chrono::steady_clock::now();
    const LinearInfo& info = model.linears.at(static_cast<std::size_t>(linear));
    const LinearKind kind = kAllLinearKinds[static_cast<std::size_t>(linear) % kLinearKindCount];
    // A model opened packed has no weight tensor: its layout dequantized stands in.
    const at::Tensor w = dense_linear_weight(model.model->layers[static_cast<std::size_t>(info.layer)], kind);
    LinearStats out;
    const TensorStats s = tensor_stats(w, 80); // one read of the weights' bytes, three passes
    out.nonfinite = s.nonfinite;
    out.mean = s.mean;
    out.std = s.std;
    out.abs_max = s.abs_max;
    out.kurtosis = s.kurtosis;
    out.outlier_fraction = s.outlier_fraction;
    out.weights = {s.min, s.max == s.min ? s.min + 1.0 : s.max, std::vector<double>(s.histogram.begin(), s.histogram.end())};
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return out;
}

LinearStatsService::LinearStatsService(QObject* parent) : QObject(parent)
{
    pool_.setMaxThreadCount(1);
}

LinearStatsService::~LinearStatsService()
{
    {
        const std::lock_guard<std::mutex> lock(mutex_);
        ++generation_;
        model_.reset();
        requested_.clear();
    }
    pool_.waitForDone();
}

void LinearStatsService::reset(std::shared_ptr<const LoadedModel> model, bool background)
{
    const std::size_t n = model ? model->linears.size() : 0;
    {
        const std::lock_guard<std::mutex> lock(mutex_);
        ++generation_;
        delivered_generation_ = generation_;
        model_ = std::move(model);
        requested_.clear();
        taken_.assign(n, 0);
        next_ = 0;
        background_ = background;
        if (background_ && model_ && n > 0 && !looping_) {
            looping_ = true;
            pool_.start([this] { work(); });
        }
    }
    stats_.clear();
    stats_.resize(n);
    computed_ = 0;
}

void LinearStatsService::request(int linear)
{
    const std::lock_guard<std::mutex> lock(mutex_);
    if (!model_ || linear < 0 || static_cast<std::size_t>(linear) >= taken_.size() || taken_[static_cast<std::size_t>(linear)])
        return;
    requested_.push_front(linear);
    if (!looping_) {
        looping_ = true;
        pool_.start([this] { work(); });
    }
}

void LinearStatsService::setBackground(bool on)
{
    const std::lock_guard<std::mutex> lock(mutex_);
    background_ = on;
    if (on && model_ && !looping_) {
        looping_ = true;
        pool_.start([this] { work(); });
    }
}

const LinearStats* LinearStatsService::stats(int linear) const
{
    return linear >= 0 && static_cast<std::size_t>(linear) < stats_.size() ? stats_[static_cast<std::size_t>(linear)].get()
                                                                            : nullptr;
}

void LinearStatsService::waitForIdle()
{
    std::unique_lock<std::mutex> lock(mutex_);
    idle_.wait(lock, [this] { return !looping_; });
}

void LinearStatsService::work()
{
    QPointer<LinearStatsService> self(this);
    for (;;) {
        bool asked = false;
        {
            const std::lock_guard<std::mutex> lock(mutex_);
            asked = !requested_.empty();
        }
        if (!asked)
            background::yield_to_interactive(); // the background pass waits while sliders move
        std::shared_ptr<const LoadedModel> model;
        std::uint64_t generation = 0;
        int linear = -1;
        {
            const std::lock_guard<std::mutex> lock(mutex_);
            while (!requested_.empty() && linear < 0) { // asked for: served at once
                const int i = requested_.front();
                requested_.pop_front();
                if (!taken_[static_cast<std::size_t>(i)])
                    linear = i;
            }
            while (linear < 0 && background_ && static_cast<std::size_t>(next_) < taken_.size()) {
                if (!taken_[static_cast<std::size_t>(next_)])
                    linear = next_;
                ++next_;
            }
            if (linear < 0 || !model_) {
                looping_ = false;
                idle_.notify_all();
                return;
            }
            taken_[static_cast<std::size_t>(linear)] = 1;
            model = model_;
            generation = generation_;
        }
        LinearStats stats;
        try {
            const background::Unit unit;
            stats = compute_linear_stats(*model, linear);
        } catch (const std::exception& e) {
            stats.error = QString::fromUtf8(e.what()); // shown in place of the figures, never a crash
        }
        QMetaObject::invokeMethod(
            this, [self, generation, linear, stats] { if (self) self->deliver(generation, linear, stats); },
            Qt::QueuedConnection);
    }
}

void LinearStatsService::deliver(std::uint64_t generation, int linear, const LinearStats& stats)
{
    if (generation != delivered_generation_ || static_cast<std::size_t>(linear) >= stats_.size() ||
        stats_[static_cast<std::size_t>(linear)])
        return;
    stats_[static_cast<std::size_t>(linear)] = std::make_unique<LinearStats>(stats);
    ++computed_;
    if (stats.nonfinite > 0)
        Q_EMIT nonFinite(linear, stats.nonfinite);
    Q_EMIT statsReady(linear);
    Q_EMIT progress(computed_, total());
}

} // namespace pbllm
