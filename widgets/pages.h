#pragma once
// The studio's six pages and the progress strip they share. Each page follows the
// StudioContext and owns its jobs and item models; none reaches into core.
#include "workers/jobs.h"
#include "workers/preview_service.h"

#include <QElapsedTimer>
#include <QTimer>
#include <QWidget>

#include <memory>

class QCheckBox;
class QComboBox;
class QCPBars;
class QCPColorMap;
class QCPGraph;
class QCPItemStraightLine;
class QCPItemText;
class QCustomPlot;
class QDoubleSpinBox;
class QLabel;
class QLineEdit;
class QPlainTextEdit;
class QProgressBar;
class QPushButton;
class QSlider;
class QSpinBox;
class QTableView;
class QTextBrowser;
class QTreeView;

namespace pbllm {

class StudioContext;
class LayerTreeModel;
class PlanTableModel;
struct SettingInfo;

/// Progress bar, stage, ETA and Cancel for one Job at a time.
class JobProgress : public QWidget {
    Q_OBJECT
public:
    explicit JobProgress(QWidget* parent = nullptr);
    void attach(Job* job);
    QPushButton* cancelButton() const { return cancel_; }

private:
    QProgressBar* bar_;
    QLabel* stage_;
    QPushButton* cancel_;
    QElapsedTimer clock_;
};

class ModelPage : public QWidget {
    Q_OBJECT
public:
    explicit ModelPage(StudioContext& context, QWidget* parent = nullptr);
    LayerTreeModel* treeModel() const { return tree_model_; }
    QString summaryText() const; ///< the summary table as shown (rich text)

private:
    void refresh();
    void showStatsProgress();
    StudioContext& context_;
    QLabel* summary_;
    QLabel* stats_progress_;
    QPushButton* stats_toggle_;
    QTreeView* tree_;
    LayerTreeModel* tree_model_;
};

class DistributionsPage : public QWidget {
    Q_OBJECT
public:
    explicit DistributionsPage(StudioContext& context, QWidget* parent = nullptr);
    CalibrateJob& calibrateJob() { return job_; }
    /// Starts calibration with the page's settings (the Calibrate button).
    void calibrate();

protected:
    void showEvent(QShowEvent* event) override;

private:
    void refreshModel();
    void refreshLinear();
    void showDetail(const LinearDetail& detail);
    void refreshAcrossLayers();
    StudioContext& context_;
    CalibrateJob job_;
    QComboBox* linear_;
    QCheckBox* log_y_;
    QComboBox* across_metric_;
    QLineEdit* text_;
    QSpinBox* nsamples_;
    QSpinBox* seqlen_;
    QPushButton* calibrate_;
    QPushButton* save_;
    QPushButton* load_;
    QLabel* calib_info_;
    JobProgress* progress_;
    QCustomPlot* weights_plot_;
    QCustomPlot* scores_plot_;
    QCustomPlot* heat_plot_;
    QCustomPlot* across_plot_;
    QCPItemStraightLine* threshold_line_ = nullptr;
    QCPItemText* threshold_label_ = nullptr;
    QCPColorMap* heat_ = nullptr;
    QTimer across_refresh_;
};

class TuningPage : public QWidget {
    Q_OBJECT
public:
    explicit TuningPage(StudioContext& context, QWidget* parent = nullptr);
    QSlider* ratioSlider() const { return ratio_; }
    QLabel* bitsLabel() const { return bits_label_; }
    PlanTableModel* tableModel() const { return table_model_; }
    QCustomPlot* errorPlot() const { return error_plot_; }
    QComboBox* methodCombo() const { return method_; }
    /// A combo per choice setting but the method (layer_settings() order; objectName = its flag).
    const std::vector<QComboBox*>& settingCombos() const { return setting_combos_; }
    /// Number of chart updates so far (tests and the latency benchmark watch it).
    int replots() const { return replots_; }

Q_SIGNALS:
    void chartUpdated();

private:
    void applyControls();
    /// Shows the plan's method and settings (set on the Run page or by a plan), and enables the
    /// controls the method reads.
    void syncMethodControls();
    void requestPreview();
    void showPreview(const PreviewSnapshot& snapshot);
    void replot();
    StudioContext& context_;
    QSlider* ratio_;
    QLabel* ratio_label_;
    QComboBox* method_;
    std::vector<QComboBox*> setting_combos_;          ///< one per choice setting but the method
    std::vector<const SettingInfo*> setting_rows_;    ///< their rows in layer_settings()
    QComboBox* bits_;
    QTableView* table_;
    PlanTableModel* table_model_;
    QCustomPlot* error_plot_;
    QCPBars* error_bars_ = nullptr;
    QLabel* bits_label_;
    QLabel* size_label_;
    QTimer replot_timer_;
    QElapsedTimer last_replot_;
    PreviewSnapshot latest_;
    int replots_ = 0;
    std::uint64_t exact_id_ = 0;         ///< request whose exact pass is running (0 = none)
    int exact_done_ = 0, exact_total_ = 0;
};

class RunPage : public QWidget {
    Q_OBJECT
public:
    explicit RunPage(StudioContext& context, QWidget* parent = nullptr);
    QuantizeJob& job() { return job_; }
    /// Starts the run with the page's settings (the Run button).
    void start();
    void setMethod(const QString& method);

private:
    void log(const QString& line);
    StudioContext& context_;
    QuantizeJob job_;
    QComboBox* method_;
    QSpinBox* nsamples_;
    QSpinBox* blocksize_;
    QDoubleSpinBox* percdamp_;
    QSpinBox* gptq_bits_;
    QSpinBox* seed_;
    QSpinBox* qat_steps_;
    QDoubleSpinBox* qat_lr_;
    QDoubleSpinBox* qat_kd_;
    QComboBox* eval_;
    QPushButton* run_;
    JobProgress* progress_;
    QPlainTextEdit* log_;
    QCustomPlot* loss_plot_;
    QLabel* result_;
};

class ExportPage : public QWidget {
    Q_OBJECT
public:
    explicit ExportPage(StudioContext& context, QWidget* parent = nullptr);
    ExportJob& job() { return job_; }
    /// Exports to `path`; asks before replacing unless `overwrite` (tests pass it).
    void exportTo(const QString& path, bool overwrite = false);

private:
    StudioContext& context_;
    ExportJob job_;
    QLineEdit* path_;
    QCheckBox* hf_;
    QLineEdit* hf_dir_;
    QPushButton* export_;
    JobProgress* progress_;
    QLabel* result_;
};

class ComparePage : public QWidget {
    Q_OBJECT
public:
    explicit ComparePage(StudioContext& context, QWidget* parent = nullptr);
    /// Starts both generations with the page's prompt and sampler.
    void start();
    GenerateJob& fullJob() { return full_; }
    GenerateJob& compressedJob() { return compressed_; }
    ScoreJob& scoreJob() { return score_; }
    EvaluateJob& evaluateJob(bool compressed) { return compressed ? evaluate_compressed_ : evaluate_full_; }
    /// Perplexity of both models (or the one there is) on the page's text and windows.
    void evaluate();
    QString statsText() const;
    QString evaluationText() const;

Q_SIGNALS:
    void comparisonDone();

private:
    void finishIfDone();
    void updateEnabled();
    /// The full-precision model (none when a packed checkpoint was opened) and the compressed one
    /// (the run's result, or the opened packed checkpoint), both run as they would be used.
    std::shared_ptr<const Model> fullModel() const;
    std::shared_ptr<const Model> compressedModel() const;
    StudioContext& context_;
    GenerateJob full_, compressed_;
    ScoreJob score_;
    EvaluateJob evaluate_full_, evaluate_compressed_;
    /// What the running comparison started with (the context may change while it runs).
    std::shared_ptr<const Model> compared_full_;
    std::shared_ptr<const Tokenizer> compared_tokenizer_;
    QLineEdit* eval_text_;
    QSpinBox* eval_windows_;
    QPushButton* evaluate_;
    QLabel* evaluation_;
    QLineEdit* prompt_;
    QDoubleSpinBox* temperature_;
    QDoubleSpinBox* top_p_;
    QSpinBox* seed_;
    QSpinBox* max_tokens_;
    QPushButton* generate_;
    QTextBrowser* full_text_;
    QTextBrowser* compressed_text_;
    QLabel* full_stats_;
    QLabel* compressed_stats_;
    QLabel* nll_;
    std::optional<GenerationOutcome> full_outcome_, compressed_outcome_;
};

} // namespace pbllm
