#pragma once
// A long-running core computation on a worker thread, as a QObject facade: started, progress
// (throttled), then exactly one of succeeded / failed(message) / cancelled, then finished.
// cancel() sets an atomic flag that core's progress callbacks read, so work stops at the next
// progress report. Deleting a running Job cancels it and waits, so closing a window mid-job is safe.
#include "core/progress.h"

#include <QObject>
#include <QString>

#include <atomic>
#include <functional>
#include <future>

namespace pbllm {

class Job : public QObject {
    Q_OBJECT
public:
    explicit Job(QObject* parent = nullptr);
    ~Job() override;

    bool running() const { return running_.load(); }
    /// Blocks until the current run (if any) has returned from the worker thread.
    void wait();

public Q_SLOTS:
    void cancel() { cancel_.store(true); }

Q_SIGNALS:
    void started();
    void progress(double fraction, const QString& stage);
    void failed(const QString& message);
    void cancelled();
    void finished();

protected:
    /// Runs `work` on a new thread; `deliver` then runs on this object's thread with nothing
    /// thrown (emit the typed result there). Returns false when a run is still in progress.
    bool launch(std::function<void(const ProgressFn&)> work, std::function<void()> deliver);

private:
    void complete(const QString& error, bool was_cancelled, const std::function<void()>& deliver);

    std::atomic<bool> cancel_{false};
    std::atomic<bool> running_{false};
    std::future<void> future_;
};

} // namespace pbllm
