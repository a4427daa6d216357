#pragma once
// Weight statistics of the loaded model's Linears, computed on a worker thread: the Linear the
// user selects first, then the others in order in the background (cancellable, with progress).
// Opening a model reads no weight data, so a memory-mapped 7B folder shows its Model page at
// once and one Linear's statistics take about a second.
#include "workers/results.h"

#include <QObject>
#include <QThreadPool>

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

namespace pbllm {

/// Statistics of one Linear weight (any dtype; a mapped one is read once, in chunks).
LinearStats compute_linear_stats(const LoadedModel& model, int linear);

class LinearStatsService : public QObject {
    Q_OBJECT
public:
    explicit LinearStatsService(QObject* parent = nullptr);
    ~LinearStatsService() override;

    /// Forgets what was computed and, for a model, starts the background pass over its Linears
    /// (or leaves it to setBackground(true)).
    void reset(std::shared_ptr<const LoadedModel> model, bool background = true);
    /// Computes this Linear's statistics next, ahead of the background pass.
    void request(int linear);
    /// Stops (or restarts) the background pass; requested Linears are still computed.
    void setBackground(bool on);
    bool background() const { return background_; }

    /// nullptr until computed (GUI thread).
    const LinearStats* stats(int linear) const;
    int computed() const { return computed_; }
    int total() const { return static_cast<int>(stats_.size()); }
    bool complete() const { return total() > 0 && computed_ == total(); }
    /// Blocks until the worker is idle (tests, shutdown); does not stop the background pass.
    void waitForIdle();

Q_SIGNALS:
    void statsReady(int linear);
    /// After each Linear: computed of total.
    void progress(int computed, int total);
    /// A Linear holds NaN/Inf weights (found by the statistics, not at opening).
    void nonFinite(int linear, qint64 count);

private:
    void work();                       ///< the worker loop (pool thread)
    void deliver(std::uint64_t generation, int linear, const LinearStats& stats); ///< GUI thread

    QThreadPool pool_; ///< one thread
    // Shared with the worker, under mutex_.
    std::mutex mutex_;
    std::condition_variable idle_;
    std::shared_ptr<const LoadedModel> model_;
    std::uint64_t generation_ = 0;
    std::deque<int> requested_;
    std::vector<char> taken_; ///< per Linear: computed or being computed
    int next_ = 0;            ///< background cursor
    bool background_ = true;
    bool looping_ = false;
    // GUI thread only.
    std::vector<std::unique_ptr<LinearStats>> stats_;
    std::uint64_t delivered_generation_ = 0;
    int computed_ = 0;
};

} // namespace pbllm
