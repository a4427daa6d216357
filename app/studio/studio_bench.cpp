#include "app/studio/studio_bench.h"

#include "widgets/main_window.h"
#include "widgets/pages.h"
#include "widgets/studio_context.h"

#include "core/llama2c.h"
#include "core/model_io.h"
#include "core/synthetic.h"
#include "core/system.h"

#include <QCoreApplication>
#include <QElapsedTimer>
#include <QEventLoop>
#include <QFile>
#include <QFileInfo>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QSlider>
#include <QTemporaryDir>
#include <QTimer>

#include <algorithm>
#include <cmath>
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
    return {static_cast<double>(peak_resident_bytes()), static_cast<double>(current_resident_bytes())};
}

double median(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

/// 21 slider moves 100 ms apart, each timed from the new value to the updated chart; empty when
/// a chart did not come within a minute.
std::vector<double> slider_latencies(TuningPage* tuning)
{
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
            return {};
        latency_ms.push_back(t.nsecsElapsed() / 1e6);
    }
    return latency_ms;
}

/// RssAnon of this process in bytes: its own memory, without the mapped model's page cache.
double anonymous_now()
{
    QFile f("/proc/self/status");
    if (f.open(QIODevice::ReadOnly))
        for (const QByteArray& line : f.readAll().split('\n'))
            if (line.startsWith("RssAnon:"))
                return line.mid(8).trimmed().split(' ').first().toDouble() * 1024;
    return 0.0;
}

/// A big model opened from its folder (mapped): Model page, one Linear's distributions,
/// sampled slider previews and the exact pass after a release. Uncalibrated, so previews use the
/// magnitude metric (calibrating a 7B model keeps every Hessian: the studio refuses it with the
/// figures).
int bench_big_model(MainWindow& window, const QString& path)
{
    StudioContext& ctx = window.context();
    TuningPage* tuning = window.tuningPage();
    window.showPage("model");
    QElapsedTimer clock;
    clock.start();
    window.openModel(path);
    if (!wait_for(&ctx, &StudioContext::modelChanged, 600000))
        return 1;
    const double model_page_s = clock.nsecsElapsed() / 1e9;
    const double anon_open = anonymous_now();
    if (!wait_for(tuning, &TuningPage::chartUpdated, 600000))
        return 1;
    const double first_preview_s = clock.nsecsElapsed() / 1e9;

    // The largest Linear of the middle block: its statistics and its saliency detail.
    const auto& m = ctx.model();
    const int linear = (m->n_layers / 2) * 7 + 6;
    window.showPage("distributions");
    clock.restart();
    double stats_s = -1, detail_s = -1;
    QEventLoop loop;
    QObject::connect(&ctx.stats(), &LinearStatsService::statsReady, &loop, [&](int i) {
        if (i == linear && stats_s < 0)
            stats_s = clock.nsecsElapsed() / 1e9;
        if (stats_s >= 0 && detail_s >= 0)
            loop.quit();
    });
    QObject::connect(&ctx.previews(), &PreviewService::detailReady, &loop, [&](std::uint64_t, const LinearDetail& d) {
        if (d.linear == linear && detail_s < 0)
            detail_s = clock.nsecsElapsed() / 1e9;
        if (stats_s >= 0 && detail_s >= 0)
            loop.quit();
    });
    QTimer::singleShot(600000, &loop, &QEventLoop::quit);
    ctx.selectLinear(linear);
    loop.exec();

    clock.restart();
    window.showPage("tuning");
    QCoreApplication::processEvents();
    const double show_tuning_s = clock.nsecsElapsed() / 1e9;
    QSlider* slider = tuning->ratioSlider();
    slider->setSliderDown(true); // a drag: sampled previews
    const std::vector<double> latency_ms = slider_latencies(tuning);
    if (latency_ms.empty())
        return 1;
    clock.restart();
    double exact_s = -1;
    QEventLoop exact_loop;
    QObject::connect(&ctx.previews(), &PreviewService::previewReady, &exact_loop, [&](const PreviewSnapshot& snap) {
        if (snap.exact()) {
            exact_s = clock.nsecsElapsed() / 1e9;
            exact_loop.quit();
        }
    });
    QTimer::singleShot(1800000, &exact_loop, &QEventLoop::quit);
    slider->setSliderDown(false); // the release asks for the exact figures
    exact_loop.exec();
    const auto [hwm, rss] = memory_now();
    QJsonObject out{{"model", path},
                    {"linears", static_cast<int>(m->linears.size())},
                    {"mapped", m->mapped},
                    {"model_page_seconds", model_page_s},
                    {"first_preview_seconds", first_preview_s},
                    {"show_tuning_page_seconds", show_tuning_s},
                    {"anon_mb_at_model_page", anon_open / 1e6},
                    {"selected_linear", m->linears[static_cast<std::size_t>(linear)].name},
                    {"selected_stats_seconds", stats_s},
                    {"selected_detail_seconds", detail_s},
                    {"sampled_fraction", ctx.previews().sampledFraction()},
                    {"slider_sampled_ms_median", median(latency_ms)},
                    {"slider_sampled_ms_max", *std::max_element(latency_ms.begin(), latency_ms.end())},
                    {"slider_sampled_ms_all", [&] {
                         QJsonArray all;
                         for (double ms : latency_ms)
                             all.append(std::round(ms));
                         return all;
                     }()},
                    {"exact_pass_seconds", exact_s},
                    {"stats_computed_by_then", ctx.stats().computed()},
                    {"peak_rss_mb", hwm / 1e6},
                    {"rss_mb", rss / 1e6},
                    {"anon_mb", anonymous_now() / 1e6}};
    std::printf("%s", QJsonDocument(out).toJson(QJsonDocument::Indented).constData());
    return 0;
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
    } else if (QFileInfo(shape).isDir()) {
        return bench_big_model(window, QFileInfo(shape).absoluteFilePath());
    } else {
        std::fprintf(stderr, "pbllm-studio: --bench %s: use stories260K, synthetic-110M or a model folder\n", qPrintable(shape));
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
    const std::vector<double> latency_ms = slider_latencies(tuning);
    if (latency_ms.empty())
        return 1;
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
