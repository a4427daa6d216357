#include "widgets/pages.h"
#include "widgets/qcustomplot_include.h"
#include "widgets/studio_context.h"

#include <QCheckBox>
#include <QComboBox>
#include <QFileDialog>
#include <QFormLayout>
#include <QGridLayout>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineEdit>
#include <QMessageBox>
#include <QPushButton>
#include <QSpinBox>
#include <QVBoxLayout>

#include <cmath>

namespace pbllm {

namespace {

QCustomPlot* make_plot(const QString& title)
{
    auto* plot = new QCustomPlot;
    plot->setMinimumSize(320, 220);
    plot->plotLayout()->insertRow(0);
    plot->plotLayout()->addElement(0, 0, new QCPTextElement(plot, title, QFont(plot->font().family(), 10, QFont::Bold)));
    return plot;
}

/// Fills `plot` with `bins` as bars (creating them once).
void show_bins(QCustomPlot* plot, const Bins& bins, bool log_y)
{
    QCPBars* bars = plot->plottableCount() > 0 ? qobject_cast<QCPBars*>(plot->plottable(0)) : new QCPBars(plot->xAxis, plot->yAxis);
    const int n = static_cast<int>(bins.counts.size());
    const double width = n > 0 ? (bins.hi - bins.lo) / n : 1.0;
    QVector<double> x(n), y(n);
    for (int i = 0; i < n; ++i) {
        x[i] = bins.lo + (i + 0.5) * width;
        // Log axes cannot show 0; empty bins sit just under 1.
        y[i] = log_y ? std::max(bins.counts[static_cast<std::size_t>(i)], 0.5) : bins.counts[static_cast<std::size_t>(i)];
    }
    bars->setWidth(width);
    bars->setData(x, y, true);
    bars->setPen(Qt::NoPen);
    bars->setBrush(QColor(70, 120, 200));
    plot->yAxis->setScaleType(log_y ? QCPAxis::stLogarithmic : QCPAxis::stLinear);
    if (log_y)
        plot->yAxis->setTicker(QSharedPointer<QCPAxisTickerLog>::create());
    else
        plot->yAxis->setTicker(QSharedPointer<QCPAxisTicker>::create());
    plot->rescaleAxes();
    if (log_y)
        plot->yAxis->setRangeLower(0.5);
    plot->replot(QCustomPlot::rpQueuedReplot);
}

} // namespace

DistributionsPage::DistributionsPage(StudioContext& context, QWidget* parent) : QWidget(parent), context_(context)
{
    auto* layout = new QVBoxLayout(this);
    auto* top = new QHBoxLayout;
    linear_ = new QComboBox;
    linear_->setMinimumWidth(320);
    log_y_ = new QCheckBox(tr("log y"));
    across_metric_ = new QComboBox;
    across_metric_->addItems({tr("Kurtosis"), tr("Outliers (%)"), tr("Hessian trace")});
    top->addWidget(new QLabel(tr("Linear:")));
    top->addWidget(linear_);
    top->addWidget(log_y_);
    top->addStretch();
    top->addWidget(new QLabel(tr("Across layers:")));
    top->addWidget(across_metric_);
    layout->addLayout(top);

    auto* grid = new QGridLayout;
    weights_plot_ = make_plot(tr("Weights"));
    scores_plot_ = make_plot(tr("Saliency (log10 score)"));
    heat_plot_ = make_plot(tr("Where salient weights sit (rows x columns)"));
    across_plot_ = make_plot(tr("Across layers"));
    grid->addWidget(weights_plot_, 0, 0);
    grid->addWidget(scores_plot_, 0, 1);
    grid->addWidget(heat_plot_, 1, 0);
    grid->addWidget(across_plot_, 1, 1);
    layout->addLayout(grid, 1);

    threshold_line_ = new QCPItemStraightLine(scores_plot_);
    threshold_line_->setPen(QPen(QColor(200, 60, 60), 2));
    threshold_line_->setVisible(false);
    threshold_label_ = new QCPItemText(scores_plot_);
    threshold_label_->position->setType(QCPItemPosition::ptAxisRectRatio);
    threshold_label_->position->setCoords(0.02, 0.02);
    threshold_label_->setPositionAlignment(Qt::AlignLeft | Qt::AlignTop);
    threshold_label_->setColor(QColor(200, 60, 60));
    heat_ = new QCPColorMap(heat_plot_->xAxis, heat_plot_->yAxis);
    heat_->setGradient(QCPColorGradient::gpHot);
    heat_plot_->yAxis->setRangeReversed(true); // row 0 at the top, as in a matrix
    auto* scale = new QCPColorScale(heat_plot_);
    heat_plot_->plotLayout()->addElement(1, 1, scale);
    heat_->setColorScale(scale);

    auto* calib = new QFormLayout;
    auto* text_row = new QHBoxLayout;
    text_ = new QLineEdit(context_.settings().calibration_text);
    auto* browse = new QPushButton(tr("…"));
    text_row->addWidget(text_, 1);
    text_row->addWidget(browse);
    nsamples_ = new QSpinBox;
    nsamples_->setRange(1, 4096);
    nsamples_->setValue(context_.settings().nsamples);
    seqlen_ = new QSpinBox;
    seqlen_->setRange(0, 1 << 16);
    seqlen_->setSpecialValueText(tr("context"));
    auto* buttons = new QHBoxLayout;
    calibrate_ = new QPushButton(tr("Calibrate"));
    save_ = new QPushButton(tr("Save…"));
    load_ = new QPushButton(tr("Load…"));
    buttons->addWidget(calibrate_);
    buttons->addWidget(save_);
    buttons->addWidget(load_);
    buttons->addStretch();
    calib_info_ = new QLabel(tr("Not calibrated: saliency needs the Hessians of each Linear's inputs."));
    progress_ = new JobProgress;
    progress_->attach(&job_);
    calib->addRow(tr("Calibration text"), text_row);
    calib->addRow(tr("Windows"), nsamples_);
    calib->addRow(tr("Window length"), seqlen_);
    calib->addRow(buttons);
    calib->addRow(progress_);
    calib->addRow(calib_info_);
    layout->addLayout(calib);

    connect(browse, &QPushButton::clicked, this, [this] {
        const QString f = QFileDialog::getOpenFileName(this, tr("Calibration text"), text_->text());
        if (!f.isEmpty())
            text_->setText(f);
    });
    connect(calibrate_, &QPushButton::clicked, this, &DistributionsPage::calibrate);
    connect(save_, &QPushButton::clicked, this, [this] {
        if (!context_.calibration())
            return;
        const QString f = QFileDialog::getSaveFileName(this, tr("Save calibration"), QString(), tr("Calibration (*.h5)"));
        if (f.isEmpty())
            return;
        try {
            CalibrateJob::save(*context_.model(), *context_.calibration(), f);
            Q_EMIT context_.status(tr("Calibration saved to %1").arg(f));
        } catch (const std::exception& e) {
            QMessageBox::warning(this, tr("Save calibration"), QString::fromStdString(e.what()));
        }
    });
    connect(load_, &QPushButton::clicked, this, [this] {
        const QString f = QFileDialog::getOpenFileName(this, tr("Load calibration"), QString(), tr("Calibration (*.h5)"));
        if (!f.isEmpty() && context_.model())
            job_.startLoad(context_.model(), f);
    });
    connect(&job_, &CalibrateJob::calibrated, &context_, &StudioContext::setCalibration);
    connect(&job_, &Job::failed, this, [this](const QString& m) { Q_EMIT context_.status(tr("Calibration failed: %1").arg(m)); });
    connect(&job_, &Job::started, this, [this] { calibrate_->setEnabled(false); });
    connect(&job_, &Job::finished, this, [this] { calibrate_->setEnabled(true); });

    connect(&context_, &StudioContext::modelChanged, this, &DistributionsPage::refreshModel);
    connect(&context_, &StudioContext::calibrationChanged, this, [this] {
        const auto& c = context_.calibration();
        save_->setEnabled(c != nullptr);
        calib_info_->setText(c ? tr("Calibrated on %1 windows x %2 tokens of %3 in %4 s")
                                     .arg(c->windows).arg(c->seqlen).arg(c->source).arg(c->seconds, 0, 'f', 1)
                               : tr("Not calibrated: saliency needs the Hessians of each Linear's inputs."));
        refreshAcrossLayers();
    });
    connect(&context_, &StudioContext::selectedLinearChanged, this, [this](int i) {
        if (linear_->currentIndex() != i)
            linear_->setCurrentIndex(i);
        refreshLinear();
    });
    connect(linear_, qOverload<int>(&QComboBox::currentIndexChanged), this, [this](int i) {
        context_.selectLinear(i);
        refreshLinear();
    });
    connect(log_y_, &QCheckBox::toggled, this, &DistributionsPage::refreshLinear);
    connect(&context_.stats(), &LinearStatsService::statsReady, this, [this](int linear) {
        if (linear == linear_->currentIndex()) {
            if (const LinearStats* st = context_.stats().stats(linear); st && st->error.isEmpty())
                show_bins(weights_plot_, st->weights, log_y_->isChecked());
        }
        if (across_metric_->currentIndex() < 2)
            across_refresh_.start(); // coalesced: the background pass delivers many in a row
    });
    across_refresh_.setSingleShot(true);
    across_refresh_.setInterval(200);
    connect(&across_refresh_, &QTimer::timeout, this, &DistributionsPage::refreshAcrossLayers);
    connect(across_metric_, qOverload<int>(&QComboBox::currentIndexChanged), this, &DistributionsPage::refreshAcrossLayers);
    // The threshold follows the plan's ratio for this Linear and the previews' metric.
    connect(&context_, &StudioContext::planChanged, this, &DistributionsPage::refreshLinear);
    connect(&context_.previews(), &PreviewService::prepared, this, &DistributionsPage::refreshLinear);
    connect(&context_.previews(), &PreviewService::detailReady, this,
            [this](std::uint64_t, const LinearDetail& d) { showDetail(d); });
    save_->setEnabled(false);
    refreshModel();
}

void DistributionsPage::showEvent(QShowEvent* event)
{
    QWidget::showEvent(event);
    refreshLinear();
}

void DistributionsPage::calibrate()
{
    if (!context_.model())
        return;
    context_.settings().calibration_text = text_->text();
    job_.start(context_.model(), text_->text(), nsamples_->value(), seqlen_->value(), context_.plan().config.seed);
}

void DistributionsPage::refreshModel()
{
    const QSignalBlocker block(linear_);
    linear_->clear();
    if (const auto& m = context_.model())
        for (const LinearInfo& l : m->linears)
            linear_->addItem(l.name);
    calibrate_->setEnabled(context_.model() != nullptr);
    refreshLinear();
    refreshAcrossLayers();
}

void DistributionsPage::refreshLinear()
{
    const auto& m = context_.model();
    const int i = linear_->currentIndex();
    if (!m || i < 0)
        return;
    const LinearInfo& info = m->linears[static_cast<std::size_t>(i)];
    if (const LinearStats* st = context_.stats().stats(i); st && st->error.isEmpty())
        show_bins(weights_plot_, st->weights, log_y_->isChecked());
    else
        context_.stats().request(i); // drawn when statsReady arrives
    // The saliency detail costs a pass over the whole Linear: only for a page someone looks at.
    if (context_.previews().ready() && isVisibleTo(window())) {
        const double ratio = context_.plan().settings_for(info.name.toStdString()).salient_ratio;
        context_.previews().requestDetail(i, ratio);
    }
}

void DistributionsPage::showDetail(const LinearDetail& d)
{
    const auto& m = context_.model();
    if (!m || d.linear != linear_->currentIndex())
        return;
    show_bins(scores_plot_, d.log10_scores, true);
    const double x = d.threshold > 0 ? std::log10(d.threshold) : d.log10_scores.lo;
    threshold_line_->setVisible(d.ratio > 0 && d.threshold > 0);
    threshold_line_->point1->setCoords(x, 0);
    threshold_line_->point2->setCoords(x, 1);
    threshold_label_->setText(tr("%1: %2% above the threshold%3")
                                  .arg(QString::fromStdString(to_string(context_.previews().metric())))
                                  .arg(100.0 * d.achieved_ratio, 0, 'f', 2)
                                  .arg(d.sampled ? tr(" (row sample; the whole Linear follows)") : QString()));
    scores_plot_->replot(QCustomPlot::rpQueuedReplot);

    heat_->data()->setSize(d.cols, d.rows);
    heat_->data()->setRange(QCPRange(0, m->linears[static_cast<std::size_t>(d.linear)].cols),
                            QCPRange(0, m->linears[static_cast<std::size_t>(d.linear)].rows));
    for (int r = 0; r < d.rows; ++r)
        for (int col = 0; col < d.cols; ++col)
            heat_->data()->setCell(col, r, d.density[static_cast<std::size_t>(r * d.cols + col)]);
    heat_->rescaleDataRange(true);
    heat_plot_->rescaleAxes();
    heat_plot_->replot(QCustomPlot::rpQueuedReplot);
}

void DistributionsPage::refreshAcrossLayers()
{
    const auto& m = context_.model();
    if (!m)
        return;
    const int metric = across_metric_->currentIndex();
    const auto& calib = context_.calibration();
    across_plot_->clearGraphs();
    // One line per Linear kind, x = decoder block.
    const int kinds = m->n_layers > 0 ? static_cast<int>(m->linears.size()) / m->n_layers : 0;
    static const QColor colors[] = {QColor(31, 119, 180), QColor(255, 127, 14), QColor(44, 160, 44), QColor(214, 39, 40),
                                    QColor(148, 103, 189), QColor(140, 86, 75), QColor(227, 119, 194)};
    for (int k = 0; k < kinds; ++k) {
        QCPGraph* g = across_plot_->addGraph();
        g->setName(m->linears[static_cast<std::size_t>(k)].kind);
        g->setPen(QPen(colors[k % 7], 2));
        g->setScatterStyle(QCPScatterStyle::ssCircle);
        for (int l = 0; l < m->n_layers; ++l) {
            const std::size_t i = static_cast<std::size_t>(l * kinds + k);
            const LinearStats* st = context_.stats().stats(static_cast<int>(i));
            if (metric < 2 && (!st || !st->error.isEmpty()))
                continue; // not computed yet: the point appears when it is
            double y = metric == 0 ? st->kurtosis : metric == 1 ? 100.0 * st->outlier_fraction : 0.0;
            if (metric == 2) {
                if (!calib)
                    continue;
                y = calib->hessian_trace[i];
            }
            g->addData(l, y);
        }
    }
    across_plot_->legend->setVisible(kinds > 0);
    across_plot_->xAxis->setLabel(tr("decoder block"));
    across_plot_->rescaleAxes();
    across_plot_->replot(QCustomPlot::rpQueuedReplot);
}

} // namespace pbllm
