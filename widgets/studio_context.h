#pragma once
// The studio's session: the loaded model, its calibration, the plan the sliders edit and the
// last quantization result, with change signals the pages follow. Pages own their jobs; this
// object owns only shared state and the preview service.
#include "workers/linear_stats_service.h"
#include "workers/preview_service.h"
#include "workers/results.h"

#include <QObject>
#include <QString>

#include <memory>

namespace pbllm {

/// Persisted settings (QSettings): what the Settings dialog edits.
struct StudioSettings {
    QString device = QStringLiteral("cpu");
    int threads = 0;              ///< 0 = all cores
    QString calibration_text;     ///< default calibration text
    QString eval_text;            ///< default evaluation text
    int nsamples = 128;
    static StudioSettings load();
    void save() const;
};

class StudioContext : public QObject {
    Q_OBJECT
public:
    explicit StudioContext(QObject* parent = nullptr);

    const std::shared_ptr<const LoadedModel>& model() const { return model_; }
    const std::shared_ptr<const CalibrationResult>& calibration() const { return calibration_; }
    const QuantPlan& plan() const { return plan_; }
    const std::shared_ptr<const RunResult>& run() const { return run_; }
    int selectedLinear() const { return selected_; }
    PreviewService& previews() { return previews_; }
    LinearStatsService& stats() { return stats_; }
    StudioSettings& settings() { return settings_; }

    void setModel(std::shared_ptr<const LoadedModel> model);
    void setCalibration(std::shared_ptr<const CalibrationResult> calibration);
    void setPlan(const QuantPlan& plan);
    void setRun(std::shared_ptr<const RunResult> run);
    void selectLinear(int index);

    /// ../shared/data/... beside the program or source tree, or "" when not found.
    static QString findSharedData(const QString& relative);

Q_SIGNALS:
    void modelChanged();
    void calibrationChanged();
    void planChanged();
    void runChanged();
    void selectedLinearChanged(int index);
    /// A message for the status bar.
    void status(const QString& message);

private:
    void preparePreviews();
    void startStatsPass();
    SaliencyMetric previewedMetric(SaliencyMetric metric) const;

    std::shared_ptr<const LoadedModel> model_;
    std::shared_ptr<const CalibrationResult> calibration_;
    QuantPlan plan_;
    std::shared_ptr<const RunResult> run_;
    int selected_ = 0;
    PreviewService previews_;
    LinearStatsService stats_;
    bool start_stats_after_previews_ = false;
    StudioSettings settings_;
};

} // namespace pbllm
