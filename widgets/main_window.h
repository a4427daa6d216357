#pragma once
// The studio window: six pages in tabs, File menu with recent models, drag and drop, settings,
// and a status bar. Small on purpose: pages hold the behaviour.
#include "workers/jobs.h"

#include <QMainWindow>

class QMenu;
class QTabWidget;

namespace pbllm {

class StudioContext;
class ModelPage;
class DistributionsPage;
class TuningPage;
class RunPage;
class ExportPage;
class ComparePage;
class JobProgress;

class MainWindow : public QMainWindow {
    Q_OBJECT
public:
    explicit MainWindow(QWidget* parent = nullptr);
    ~MainWindow() override;

    /// Opens a model file or folder in the background; "" opens the default model.
    void openModel(const QString& path);
    /// Page names: model, distributions, tuning, run, export, compare.
    bool showPage(const QString& name);
    QWidget* currentPage() const;

    StudioContext& context() { return *context_; }
    LoadModelJob& loadJob() { return load_; }
    ModelPage* modelPage() const { return model_page_; }
    DistributionsPage* distributionsPage() const { return distributions_page_; }
    TuningPage* tuningPage() const { return tuning_page_; }
    RunPage* runPage() const { return run_page_; }
    ExportPage* exportPage() const { return export_page_; }
    ComparePage* comparePage() const { return compare_page_; }

protected:
    void dragEnterEvent(QDragEnterEvent* event) override;
    void dropEvent(QDropEvent* event) override;
    void closeEvent(QCloseEvent* event) override;

private:
    void buildMenus();
    void rememberRecent(const QString& path);
    void rebuildRecentMenu();
    void showSettings();

    StudioContext* context_;
    LoadModelJob load_;
    QTabWidget* tabs_;
    JobProgress* load_progress_;
    QMenu* recent_menu_ = nullptr;
    ModelPage* model_page_;
    DistributionsPage* distributions_page_;
    TuningPage* tuning_page_;
    RunPage* run_page_;
    ExportPage* export_page_;
    ComparePage* compare_page_;
};

} // namespace pbllm
