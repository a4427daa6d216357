#include "workers/job.h"

#include "core/error.h"

#include <QMetaObject>
#include <QPointer>

#include <chrono>
#include <exception>
#include <string>

namespace pbllm {

Job::Job(QObject* parent) : QObject(parent) {}

Job::~Job()
{
    cancel();
    wait();
}

void Job::wait()
{
    if (future_.valid())
        future_.wait();
}

bool Job::launch(std::function<void(const ProgressFn&)> work, std::function<void()> deliver)
{
    if (running_.exchange(true))
        return false;
    wait(); // the previous thread has delivered; join it
    cancel_.store(false);
    Q_EMIT started();
    QPointer<Job> self(this);
    future_ = std::async(std::launch::async, [this, self, work = std::move(work), deliver = std::move(deliver)] {
        // Progress goes out at most every 50 ms (and always at 0 and 1), so a fast loop
        // cannot flood the GUI thread's event queue.
        auto last = std::chrono::steady_clock::now() - std::chrono::seconds(1);
        const ProgressFn progress = [&](double fraction, std::string_view stage) {
            const auto now = std::chrono::steady_clock::now();
            if (fraction <= 0.0 || fraction >= 1.0 || now - last > std::chrono::milliseconds(50)) {
                last = now;
                const QString text = QString::fromUtf8(stage.data(), static_cast<int>(stage.size()));
                QMetaObject::invokeMethod(
                    this, [self, fraction, text] { if (self) Q_EMIT self->progress(fraction, text); }, Qt::QueuedConnection);
            }
            return !cancel_.load();
        };
        QString error;
        bool was_cancelled = false;
        try {
            work(progress);
            was_cancelled = cancel_.load();
        } catch (const Cancelled&) {
            was_cancelled = true;
        } catch (const std::bad_alloc&) {
            error = QStringLiteral("out of memory");
        } catch (const std::exception& e) {
            error = QString::fromStdString(e.what());
        }
        // The destructor waits for this thread, so `this` outlives the queued call's creation;
        // QPointer drops it if the object is gone by the time the event loop runs it.
        QMetaObject::invokeMethod(
            this, [self, error, was_cancelled, deliver] { if (self) self->complete(error, was_cancelled, deliver); },
            Qt::QueuedConnection);
    });
    return true;
}

void Job::complete(const QString& error, bool was_cancelled, const std::function<void()>& deliver)
{
    if (!error.isEmpty()) {
        running_.store(false);
        Q_EMIT failed(error);
    } else if (was_cancelled) {
        running_.store(false);
        Q_EMIT cancelled();
    } else {
        running_.store(false);
        try {
            deliver();
        } catch (const std::exception& e) {
            Q_EMIT failed(QString::fromStdString(e.what()));
        }
    }
    Q_EMIT finished();
}

} // namespace pbllm
