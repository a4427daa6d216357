#include "widgets/studio_context.h"

#include <QCoreApplication>
#include <QDir>
#include <QFileInfo>
#include <QSettings>

namespace pbllm {

StudioSettings StudioSettings::load()
{
    QSettings s;
    StudioSettings out;
    out.device = s.value("device", out.device).toString();
    out.threads = s.value("threads", out.threads).toInt();
    out.calibration_text = s.value("calibration_text", StudioContext::findSharedData("data/tinystories/tinystories_train_head.txt")).toString();
    out.eval_text = s.value("eval_text", StudioContext::findSharedData("data/tinystories/tinystories_val.txt")).toString();
    out.nsamples = s.value("nsamples", out.nsamples).toInt();
    return out;
}

void StudioSettings::save() const
{
    QSettings s;
    s.setValue("device", device);
    s.setValue("threads", threads);
    s.setValue("calibration_text", calibration_text);
    s.setValue("eval_text", eval_text);
    s.setValue("nsamples", nsamples);
}

StudioContext::StudioContext(QObject* parent) : QObject(parent), settings_(StudioSettings::load())
{
    plan_.config.nsamples = settings_.nsamples;
    connect(&previews_, &PreviewService::failed, this, &StudioContext::status);
    connect(&previews_, &PreviewService::prepared, this, &StudioContext::startStatsPass);
    connect(&previews_, &PreviewService::failed, this, &StudioContext::startStatsPass);
    connect(&stats_, &LinearStatsService::nonFinite, this, [this](int linear, qint64 count) {
        if (model_)
            Q_EMIT status(tr("%1 holds %L2 NaN/Inf weights: this model cannot be quantized or evaluated")
                              .arg(model_->linears[static_cast<std::size_t>(linear)].name).arg(count));
    });
}

QString StudioContext::findSharedData(const QString& relative)
{
    QStringList roots;
    if (qEnvironmentVariableIsSet("PBLLM_SHARED_DIR"))
        roots << qEnvironmentVariable("PBLLM_SHARED_DIR");
    QDir dir(QCoreApplication::applicationDirPath());
    for (int up = 0; up < 6; ++up, dir.cdUp())
        roots << dir.filePath("shared") << dir.filePath("../shared");
    roots << QDir::current().filePath("../shared");
    for (const QString& root : roots) {
        const QString path = QDir(root).filePath(relative);
        if (QFileInfo::exists(path))
            return QFileInfo(path).canonicalFilePath();
    }
    return {};
}

void StudioContext::setModel(std::shared_ptr<const LoadedModel> model)
{
    model_ = std::move(model);
    calibration_.reset();
    run_.reset();
    selected_ = 0;
    // Selected Linears at once; the background pass waits for the previews (both read the file).
    stats_.reset(model_, /*background=*/false);
    start_stats_after_previews_ = true;
    Q_EMIT modelChanged();
    Q_EMIT calibrationChanged();
    Q_EMIT runChanged();
    previews_.prepare(model_, nullptr, previewedMetric(plan_.config.layer.metric)); // no calibration yet
}

void StudioContext::setCalibration(std::shared_ptr<const CalibrationResult> calibration)
{
    calibration_ = std::move(calibration);
    Q_EMIT calibrationChanged();
    preparePreviews();
}

void StudioContext::setPlan(const QuantPlan& plan)
{
    // A switch that changes nothing to preview (between Hessian metrics before calibration) is
    // not prepared again: for 7B that is seconds of reading the file.
    const bool metric_changed = previewedMetric(plan.config.layer.metric) != previewedMetric(plan_.config.layer.metric);
    plan_ = plan;
    if (metric_changed)
        preparePreviews();
    Q_EMIT planChanged();
}

void StudioContext::setRun(std::shared_ptr<const RunResult> run)
{
    run_ = std::move(run);
    Q_EMIT runChanged();
}

void StudioContext::selectLinear(int index)
{
    if (!model_ || index < 0 || index >= static_cast<int>(model_->linears.size()) || index == selected_)
        return;
    selected_ = index;
    stats_.request(index);
    Q_EMIT selectedLinearChanged(index);
}

void StudioContext::startStatsPass()
{
    if (start_stats_after_previews_ && model_)
        stats_.setBackground(true);
    start_stats_after_previews_ = false;
}

SaliencyMetric StudioContext::previewedMetric(SaliencyMetric metric) const
{
    // The Hessian metrics need calibration; until then previews use the magnitude.
    return metric != SaliencyMetric::Magnitude && !calibration_ ? SaliencyMetric::Magnitude : metric;
}

void StudioContext::preparePreviews()
{
    if (!model_)
        return;
    const SaliencyMetric metric = previewedMetric(plan_.config.layer.metric);
    if (metric != plan_.config.layer.metric)
        Q_EMIT status(tr("Previews use the magnitude metric until the model is calibrated"));
    previews_.prepare(model_, calibration_, metric);
}

} // namespace pbllm
