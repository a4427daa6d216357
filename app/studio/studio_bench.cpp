#include "app/studio/studio_bench.h"

#include "widgets/main_window.h"
#include "widgets/pages.h"
#include "widgets/studio_context.h"

#include "core/llama2c.h"
#include "core/model_io.h"
#include "core/synthetic.h"

#include <QElapsedTimer>
#include <QEventLoop>
#include <QFile>
#include <QJsonDocument>
#include <QJsonObject>
#include <QSlider>
#include <QTemporaryDir>
#include <QTimer>

#include <algorithm>
#include <cstdio>
#include <vector>

namespace pbllm {

namespace {

/// Runs the event loop until `signal` of `sender` fires (true) or `ms` pass (false).
template <typename Sender, typename Signal>
bool wait_for(Sender* sender, Signal signal, int ms)
{
    QEventLoop loop;
    bool fired = false;
    QObject::connect(sender, signal, &loop, [&] {
        fired = true;
        loop.quit();
    });
    QTimer::singleShot(ms, &loop, &QEventLoop::quit);
    loop.exec();
    return fired;
}

/// VmHWM and VmRSS of this process in bytes.
std::pair<double, double> memory_now()
{
    QFile f("/proc/self/status");
    double hwm = 0, rss = 0;
    if (f.open(QIODevice::ReadOnly))
        for (const QByteArray& line : f.readAll().split('\n')) {
            if (line.startsWith("VmHWM:"))
                hwm = line.mid(6).trimmed().split(' ').first().toDouble() * 1024;
            if (line.startsWith("VmRSS:"))
                rss = line.mid(6).trimmed().split(' ').first().toDouble() * 1024;
        }
    return {hwm, rss};
}

double median(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

} // namespace

int run_studio_bench(MainWindow& window, const QString& shape, const QElapsedTimer& since_start)
{
    QTemporaryDir scratch;
    QString path;
    const ModelLocation def = locate_default_model();
    if (shape == "stories260K") {
        path = QString::fromStdString(def.model_path);
    } else if (shape == "synthetic-110M") {
        ModelConfig c = stories110m_shape();
        c.vocab_size = 512; // tok512, so the studio has a tokenizer; the Linears are 110M's
        path = scratch.filePath("synthetic-110M.bin");
        save_llama2c_v1(make_synthetic_model(c, 0), path.toStdString());
        QFile::copy(QString::fromStdString(def.tokenizer_path), scratch.filePath("tokenizer.model"));
    } else {
        std::fprintf(stderr, "pbllm-studio: --bench %s: use stories260K or synthetic-110M\n", qPrintable(shape));
        return 2;
    }
    StudioContext& ctx = window.context();
    TuningPage* tuning = window.tuningPage();
    window.showPage("tuning");
    window.openModel(path);
    if (!wait_for(tuning, &TuningPage::chartUpdated, 600000))
        return 1;
    const double open_seconds = since_start.elapsed() / 1000.0;

    // A small calibration, so the previews use the default Hessian metric.
    window.distributionsPage()->calibrateJob().start(ctx.model(), ctx.settings().calibration_text, 8, 256, 0);
    if (!wait_for(&ctx.previews(), &PreviewService::prepared, 600000) || !wait_for(tuning, &TuningPage::chartUpdated, 60000))
        return 1;
    std::vector<double> latency_ms;
    QSlider* slider = tuning->ratioSlider();
    for (int i = 0; i < 21; ++i) {
        // A pause longer than the 40 ms redraw throttle: this measures a move's own latency
        // (preview of every Linear + redraw), not the throttle.
        QEventLoop pause;
        QTimer::singleShot(100, &pause, &QEventLoop::quit);
        pause.exec();
        QElapsedTimer t;
        t.start();
        slider->setValue(slider->maximum() * (i % 2 ? 1 : 3) / 10 + i);
        if (!wait_for(tuning, &TuningPage::chartUpdated, 60000))
            return 1;
        latency_ms.push_back(t.nsecsElapsed() / 1e6);
    }
    QJsonObject out{{"model", shape},
                    {"open_seconds", open_seconds},
                    {"slider_ms_median", median(latency_ms)},
                    {"slider_ms_max", *std::max_element(latency_ms.begin(), latency_ms.end())},
                    {"linears", static_cast<int>(ctx.model()->linears.size())}};
    if (shape == "stories260K") { // comparing needs a quantized model: quick on this one
        window.runPage()->start();
        if (!wait_for(&ctx, &StudioContext::runChanged, 600000))
            return 1;
        const double before = memory_now().second;
        window.comparePage()->start();
        if (!wait_for(window.comparePage(), &ComparePage::comparisonDone, 600000))
            return 1;
        const auto [hwm, rss] = memory_now();
        out["rss_before_compare_mb"] = before / 1e6;
        out["rss_after_compare_mb"] = rss / 1e6;
        out["peak_rss_mb"] = hwm / 1e6;
    }
    std::printf("%s", QJsonDocument(out).toJson(QJsonDocument::Indented).constData());
    return 0;
}

} // namespace pbllm
