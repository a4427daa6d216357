#include "widgets/main_window.h"

#include "widgets/pages.h"
#include "widgets/studio_context.h"

#include "core/model_io.h"
#include "core/system.h"

#include <QAction>
#include <QApplication>
#include <QCloseEvent>
#include <QComboBox>
#include <QDialog>
#include <QDialogButtonBox>
#include <QDragEnterEvent>
#include <QFileDialog>
#include <QFormLayout>
#include <QLineEdit>
#include <QMenuBar>
#include <QMessageBox>
#include <QMimeData>
#include <QSettings>
#include <QSpinBox>
#include <QStatusBar>
#include <QTabWidget>
#include <QThread>

namespace pbllm {

namespace {
const char* const kPageNames[] = {"model", "distributions", "tuning", "run", "export", "compare"};
constexpr int kRecentMax = 8;
} // namespace

MainWindow::MainWindow(QWidget* parent) : QMainWindow(parent), context_(new StudioContext(this))
{
    setWindowTitle(tr("PB-LLM Studio"));
    setAcceptDrops(true);
    tabs_ = new QTabWidget;
    model_page_ = new ModelPage(*context_);
    distributions_page_ = new DistributionsPage(*context_);
    tuning_page_ = new TuningPage(*context_);
    run_page_ = new RunPage(*context_);
    export_page_ = new ExportPage(*context_);
    compare_page_ = new ComparePage(*context_);
    tabs_->addTab(model_page_, tr("&Model"));
    tabs_->addTab(distributions_page_, tr("&Distributions"));
    tabs_->addTab(tuning_page_, tr("&Tuning"));
    tabs_->addTab(run_page_, tr("&Run"));
    tabs_->addTab(export_page_, tr("&Export"));
    tabs_->addTab(compare_page_, tr("&Compare"));
    setCentralWidget(tabs_);
    load_progress_ = new JobProgress;
    load_progress_->attach(&load_);
    statusBar()->addPermanentWidget(load_progress_, 1);
    buildMenus();

    connect(&load_, &LoadModelJob::loaded, this, [this](std::shared_ptr<const LoadedModel> m) {
        context_->setModel(m);
        setWindowTitle(tr("%1 — PB-LLM Studio").arg(m->display_name));
        rememberRecent(m->path);
        statusBar()->showMessage(tr("Loaded %1 in %2 s").arg(m->path).arg(m->load_seconds, 0, 'f', 2), 8000);
    });
    connect(&load_, &Job::failed, this, [this](const QString& message) {
        statusBar()->showMessage(message, 15000);
        if (isVisible())
            QMessageBox::warning(this, tr("Open model"), message);
    });
    connect(context_, &StudioContext::status, this, [this](const QString& m) { statusBar()->showMessage(m, 10000); });
    resize(1280, 820);
}

MainWindow::~MainWindow() = default;

void MainWindow::buildMenus()
{
    QMenu* file = menuBar()->addMenu(tr("&File"));
    file->addAction(tr("&Open model file…"), QKeySequence::Open, this, [this] {
        const QString f = QFileDialog::getOpenFileName(this, tr("Open model"), QString(),
                                                       tr("Models (*.bin *.pbllm.h5 *.h5 config.json);;All files (*)"));
        if (!f.isEmpty())
            openModel(f.endsWith("config.json") ? QFileInfo(f).path() : f);
    });
    file->addAction(tr("Open model &folder (Hugging Face)…"), this, [this] {
        const QString d = QFileDialog::getExistingDirectory(this, tr("Open model folder"));
        if (!d.isEmpty())
            openModel(d);
    });
    file->addAction(tr("Open &default model"), this, [this] { openModel({}); });
    recent_menu_ = file->addMenu(tr("&Recent models"));
    rebuildRecentMenu();
    file->addSeparator();
    file->addAction(tr("&Settings…"), this, &MainWindow::showSettings);
    file->addSeparator();
    file->addAction(tr("&Quit"), QKeySequence::Quit, this, &QWidget::close);
}

void MainWindow::openModel(const QString& path)
{
    if (load_.running()) {
        statusBar()->showMessage(tr("A model is still loading"), 5000);
        return;
    }
    QString target = path;
    if (target.isEmpty()) {
        try {
            target = QString::fromStdString(locate_default_model().model_path);
        } catch (const std::exception& e) {
            statusBar()->showMessage(QString::fromStdString(e.what()), 15000);
            return;
        }
    }
    load_.start(target, context_->settings().device);
}

bool MainWindow::showPage(const QString& name)
{
    for (int i = 0; i < 6; ++i)
        if (name == QLatin1String(kPageNames[i])) {
            tabs_->setCurrentIndex(i);
            return true;
        }
    return false;
}

QWidget* MainWindow::currentPage() const { return tabs_->currentWidget(); }

void MainWindow::rememberRecent(const QString& path)
{
    QSettings s;
    QStringList recent = s.value("recent_models").toStringList();
    recent.removeAll(path);
    recent.prepend(path);
    while (recent.size() > kRecentMax)
        recent.removeLast();
    s.setValue("recent_models", recent);
    rebuildRecentMenu();
}

void MainWindow::rebuildRecentMenu()
{
    recent_menu_->clear();
    const QStringList recent = QSettings().value("recent_models").toStringList();
    for (const QString& path : recent)
        recent_menu_->addAction(path, this, [this, path] { openModel(path); });
    recent_menu_->setEnabled(!recent.isEmpty());
}

void MainWindow::showSettings()
{
    StudioSettings& s = context_->settings();
    QDialog dialog(this);
    dialog.setWindowTitle(tr("Settings"));
    auto* form = new QFormLayout(&dialog);
    auto* device = new QComboBox;
    device->addItem(tr("CPU"), "cpu");
    if (cuda_available())
        device->addItem(tr("CUDA"), "cuda");
    device->setCurrentIndex(std::max(0, device->findData(s.device)));
    auto* threads = new QSpinBox;
    threads->setRange(0, 1024);
    threads->setSpecialValueText(tr("all cores (%1)").arg(QThread::idealThreadCount()));
    threads->setValue(s.threads);
    auto* calib = new QLineEdit(s.calibration_text);
    auto* eval = new QLineEdit(s.eval_text);
    auto* nsamples = new QSpinBox;
    nsamples->setRange(1, 4096);
    nsamples->setValue(s.nsamples);
    form->addRow(tr("Device (takes effect for the next model)"), device);
    form->addRow(tr("Threads (takes effect at the next start)"), threads);
    form->addRow(tr("Calibration text"), calib);
    form->addRow(tr("Evaluation text"), eval);
    form->addRow(tr("Calibration windows"), nsamples);
    auto* buttons = new QDialogButtonBox(QDialogButtonBox::Ok | QDialogButtonBox::Cancel);
    form->addRow(buttons);
    connect(buttons, &QDialogButtonBox::accepted, &dialog, &QDialog::accept);
    connect(buttons, &QDialogButtonBox::rejected, &dialog, &QDialog::reject);
    if (dialog.exec() != QDialog::Accepted)
        return;
    s.device = device->currentData().toString();
    s.threads = threads->value();
    s.calibration_text = calib->text();
    s.eval_text = eval->text();
    s.nsamples = nsamples->value();
    s.save();
}

void MainWindow::dragEnterEvent(QDragEnterEvent* event)
{
    if (event->mimeData()->hasUrls() && event->mimeData()->urls().first().isLocalFile())
        event->acceptProposedAction();
}

void MainWindow::dropEvent(QDropEvent* event)
{
    const QString path = event->mimeData()->urls().first().toLocalFile();
    const QFileInfo info(path);
    // A dropped config.json or safetensors file means its folder.
    openModel(info.isFile() && (info.fileName() == "config.json" || info.suffix() == "safetensors") ? info.path() : path);
    event->acceptProposedAction();
}

void MainWindow::closeEvent(QCloseEvent* event)
{
    // Pages' jobs cancel and join in their destructors; say so while that happens.
    statusBar()->showMessage(tr("Stopping running jobs…"));
    event->accept();
}

} // namespace pbllm
